"""Print the packages whose version in a `pip freeze` differs from a lock's pin (`make lock-check`).

    python infra/lock/moved.py requirements-dev.lock freeze.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)")


def versions(path: str) -> dict[str, str]:
    out = {}
    for line in Path(path).read_text().splitlines():
        m = PIN.match(line)
        if m:
            out[re.sub(r"[-_.]+", "-", m["name"]).lower()] = m["version"]
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.exit(__doc__)
    locked, installed = versions(argv[0]), versions(argv[1])
    rows = [(n, locked.get(n, "-"), installed.get(n, "-")) for n in sorted(locked.keys() | installed.keys())]
    moved = [r for r in rows if r[1] != r[2]]
    width = max([len(n) for n, _, _ in moved] + [7])
    print(f"{len(moved)} of {len(rows)} packages differ from {argv[0]}:")
    print(f"  {'package':<{width}}  {'locked':<16} newest")
    for name, pin, new in moved:
        print(f"  {name:<{width}}  {pin:<16} {new}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
