"""lma3d inspect: print a raw dataset's statistics (or a shard folder's manifest totals).

    lma3d inspect work/raw/Full_view/Seen
    lma3d inspect data/PIAD/Seen --format piad --json
    lma3d inspect shards/full_seen            (a shard folder: its manifest totals, every shard verified)

Reads every record once with the same checks as `lma3d shard`: rejected records are counted per reason
code and the first few are shown. Exit 0 when the dataset could be read (even with rejections), 2 for a
missing root or list file.

A shard folder (one with manifest.json) is verified whole: the manifest against its schema, then every shard
and points.arrow against their sha256, sample counts, keys and values, as the loaders check them. Every bad
shard is listed; exit 2 when there is any (or when the manifest itself is invalid).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from jobs.entry import UserError, entry
from pipeline.formats import FORMATS, KINDS
from pipeline.stats import dataset_stats, manifest_summary


@entry("inspect")
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lma3d inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", help="a raw dataset root (AGPIL view×setting folder, PIAD or LASO) or a shard folder")
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="raw format (default: detect)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--num-points", type=int, default=2048, help="points per cloud to expect (default 2048)")
    parser.add_argument("--examples", type=int, default=5, help="rejections to show (default 5)")
    args = parser.parse_args(argv)

    from pipeline.storage import StorageError, check_reachable, is_uri

    if is_uri(args.root):  # a shard folder on object storage (raw datasets are read from local folders)
        try:
            check_reachable(args.root, "lma3d inspect")
        except StorageError as e:
            raise UserError(str(e)) from None
        return inspect_shards(args.root, args.json)
    root = Path(args.root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist or is not a folder")
    if (root / "manifest.json").is_file():
        return inspect_shards(root, args.json)
    try:
        stats = dataset_stats(root, args.format, args.num_points, args.examples)
    except ValueError as e:  # unknown format, misaligned lists, refused pickle: one clear line
        raise UserError(str(e)) from None
    print(json.dumps(stats, indent=2) if args.json else render_stats(stats))
    return 0


def inspect_shards(root: Path | str, as_json: bool) -> int:
    from pipeline.loaders.verify import verify_folder
    from pipeline.shards.manifest import read_manifest

    try:
        summary = manifest_summary(read_manifest(root))
        verified = verify_folder(root)
    except ValueError as e:  # the manifest or sizes.json breaks the schema: nothing in the folder can be trusted
        raise UserError(str(e)) from None
    if as_json:
        print(json.dumps(summary | {"verification": verified}, indent=2))
    else:
        print(render_manifest(root, summary))
        rows = [[b["name"], b["reason"]] for b in verified["bad"]]
        print(f"\nverified {verified['shards']} shards ({verified['samples']} samples) and points.arrow "
              f"({verified['point_bank'] or 'none'})")  # fmt: skip
        if rows:
            print("\n" + table("corrupt", ["file", "problem"], rows))
    if verified["bad"]:
        names = ", ".join(b["name"] for b in verified["bad"])
        print(f"lma3d inspect: error: {len(verified['bad'])} corrupt in {root}: {names}", file=sys.stderr)
        return 2
    return 0


def table(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table; numbers right-aligned, floats to 3 decimals."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(row[i], int | float) for row in rows) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [title, line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells] or ["(none)"]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


def render_stats(stats: dict[str, Any]) -> str:
    kinds = [k for k in KINDS if any(k in v for v in stats["records"].values())]
    parts = [
        f"{stats['format']} dataset at {stats['root']}: {stats['items']} items, {stats['total_records']} records, "
        f"{stats['total_rejections']} rejected, {stats['duplicate_keys']} duplicate keys",
        _kind_table("records per split", "split", kinds, stats["records"]),
        _kind_table("records per object", "object", kinds, stats["objects"]),
        _kind_table("records per affordance", "affordance", kinds, stats["affordances"]),
        table("rejections per reason", ["code", "records"], [[c, n] for c, n in stats["rejections"].items()]),
    ]
    if stats["rejection_examples"]:
        parts.append(
            "first rejections:\n" + "\n".join(f"  {r['key']}: {r['reason']}" for r in stats["rejection_examples"])
        )
    if stats["duplicate_key_examples"]:
        parts.append("duplicate keys: " + ", ".join(stats["duplicate_key_examples"]))
    points = stats["points"]
    if points["clouds"]:
        ranges = [[axis, lo, hi] for axis, lo, hi in zip("xyz", points["xyz_min"], points["xyz_max"])]
        parts += [
            table("points per cloud", ["points", "clouds"], [[n, c] for n, c in points["point_counts"].items()]),
            table("coordinate range", ["axis", "min", "max"], ranges),
            _fraction_table(
                "train point bank: fraction of points with label >= 0.5", "clouds", points["bank_positive_fraction"]
            ),
            _fraction_table("samples: fraction of GT points >= 0.5", "samples", points["triplet_positive_fraction"]),
        ]
    images = stats["images"]
    if images["images"]:
        parts += [
            table("image sizes (w x h)", ["size", "images"], [[s, n] for s, n in list(images["sizes"].items())[:10]]),
            table("image modes", ["mode", "images"], [[m, n] for m, n in images["modes"].items()]),
            table("image formats", ["format", "images"], [[f, n] for f, n in images["formats"].items()]),
        ]
    return "\n\n".join(parts)


def _kind_table(title: str, name: str, kinds: list[str], counts: dict[str, dict[str, int]]) -> str:
    return table(title, [name, *kinds], [[row, *(c.get(k, 0) for k in kinds)] for row, c in counts.items()])


def _fraction_table(title: str, unit: str, fractions: dict[str, dict[str, Any]]) -> str:
    rows = [[aff, s["n"], s["mean"], s["empty"]] for aff, s in fractions.items()]
    return table(title, ["affordance", unit, "mean fraction", "none >= 0.5"], rows)


def render_manifest(root: Path | str, summary: dict[str, Any]) -> str:
    scalars = [[k, v] for k, v in summary.items() if k not in ("counts", "shard_totals")]
    counts = [[k, v] for k, v in _flatten(summary["counts"]).items()]
    totals = summary["shard_totals"]
    fields = sorted({f for t in totals.values() for f in t})
    return "\n\n".join(
        [
            f"shard folder {root} (manifest.json)",
            table("manifest", ["field", "value"], scalars),
            table("counts", ["count", "value"], counts),
            table(
                "shard totals", ["split", *fields], [[s, *(t.get(f, "") for f in fields)] for s, t in totals.items()]
            ),
        ]
    )


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix or "value": json.dumps(value) if isinstance(value, list) else value}


if __name__ == "__main__":
    raise SystemExit(main())
