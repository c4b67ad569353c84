"""Write infra/lock/resolution.json: what each package pinned in requirements-dev.lock requires, read from its own
metadata in an environment installed from that lock (`make lock` runs this after installing it).

The record lets tests/test_lock.py check that the locks are closed under their packages' requirements from files
alone: what is installed on the machine running the tests, and what the registry serves that day, do not matter.
Requirements are stored as written in the metadata, markers included; the test evaluates the markers for the
platform the locks are compiled for (`TARGET`, the same as `make lock`'s LOCK_TARGET).

    python infra/lock/record_resolution.py            # rewrite the record from this interpreter's packages
    python infra/lock/record_resolution.py --check    # exit 1 if the record differs from what it would write
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements-dev.lock"
RECORD = ROOT / "infra" / "lock" / "resolution.json"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)")

# PEP 508 marker values of the locks' platform: Linux x86_64, CPython 3.11 (LOCK_TARGET in the Makefile).
TARGET = {
    "implementation_name": "cpython",
    "implementation_version": "3.11.7",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.11.7",
    "python_version": "3.11",
    "sys_platform": "linux",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            pins[canonical(m["name"])] = m["version"]
    return pins


def resolution() -> dict:
    packages, wrong = {}, []
    for name, version in sorted(lock_pins(LOCK).items()):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed (pinned {version})")
            continue
        if dist.version != version:
            wrong.append(f"{name}: installed {dist.version}, pinned {version}")
            continue
        packages[name] = {"version": version, "requires": list(dist.requires or [])}
    if wrong:
        sys.exit("install requirements-dev.lock first (make install); these differ:\n  " + "\n  ".join(wrong))
    return {"lock": LOCK.name, "target": TARGET, "packages": packages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the record instead of writing it")
    args = parser.parse_args(argv)
    text = json.dumps(resolution(), indent=1, sort_keys=True) + "\n"
    if args.check:
        same = RECORD.exists() and RECORD.read_text() == text
        print(f"{RECORD.relative_to(ROOT)} is {'current' if same else 'stale: run make lock'}")
        return 0 if same else 1
    RECORD.write_text(text)
    print(f"wrote {RECORD.relative_to(ROOT)}: {len(text.splitlines())} lines")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
