"""Re-signed shards that claim gigabytes (issue 32): whoever can write a shard folder can also rewrite its
manifest's sha256, so sizes are checked from what a shard declares before anything is allocated: a tar member
by its header against a per-member limit, an `.npy` member by its header's shape x itemsize against the bytes
it holds. Either is a corrupt shard (one line naming it), in `lma3d inspect` as in every loader.

The folders are written by hand (a few samples, no Ray); the bombs run in a child under a 4 GB address-space
cap (tests/capped.py), with their peak memory and time printed.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from capped import Capped, run_python, run_verb

from pipeline.shards.manifest import FORMAT_VERSION, file_sha256

N = 16
GIB = 1 << 30
META = json.dumps({"object": "Bag", "affordance": "lift", "instruction": "lift it"}).encode()
SHARD = "test/shard-000000.tar"


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def sample(key: str, points: bytes | None = None) -> list[tuple[str, bytes]]:
    """A test triplet's members, as the shard writer orders them."""
    xyz = npy(np.zeros((N, 3), np.float32)) if points is None else points
    return [(f"{key}.points.npy", xyz), (f"{key}.label.npy", npy(np.zeros(N, np.float32))), (f"{key}.json", META)]


def header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, 0, 0o644, kind
    return info.tobuf(format=tarfile.GNU_FORMAT if kind == tarfile.GNUTYPE_LONGNAME else tarfile.USTAR_FORMAT)


def write_folder(root: Path, members: list[tuple[str, bytes]], samples: int, hole: tuple | None = None):
    """A shard folder holding one test shard of `members` (then, with `hole`, a member of that name declaring that
    many bytes, left as a hole in a sparse file), its manifest re-signed to match whatever was written."""
    path = root / SHARD
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        for name, data in members:
            f.write(header(name, len(data)) + data + bytes(-len(data) % 512))
        if hole is not None:
            f.write(header(*hole))  # (name, declared bytes[, tar type])
            f.seek(hole[1] + -hole[1] % 512, io.SEEK_CUR)
        f.write(bytes(1024))  # the end-of-archive blocks
    entry = {"name": SHARD, "split": "test", "samples": samples, "bytes": path.stat().st_size,
             "sha256": file_sha256(path)}  # fmt: skip
    manifest = {"format_version": FORMAT_VERSION, "shards": [entry], "splits": {"test": {"samples": samples,
                "shards": 1}}, "config": {"num_points": N}}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "sizes.json").write_text(json.dumps({SHARD: samples}))
    return root


def _inspected(run: Capped) -> str:
    """The one bad shard's reason from `lma3d inspect --json`, after the exit code and the one stderr line."""
    print(f"\n[bounded] peak {run.peak_mb:.0f} MB, {run.seconds:.1f} s: {run.lines[-1:]}")
    assert run.code == 2 and len(run.lines) == 1 and SHARD in run.lines[0], (run.code, run.stderr[-2000:])
    assert run.peak_mb < 1500
    bad = json.loads(run.stdout)["verification"]["bad"]
    assert [b["name"] for b in bad] == [SHARD]
    return bad[0]["reason"]


def test_a_clean_hand_made_folder_passes_inspect(tmp_path) -> None:
    """The layout the refusals below start from is one the verifier accepts."""
    folder = write_folder(tmp_path / "shards", sample("Test_Bag_lift_0") + sample("Test_Bag_lift_1"), 2)
    run = run_verb("inspect", str(folder), "--json")
    assert run.code == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["verification"] == {"shards": 1, "samples": 2, "bad": [], "point_bank": None}


@pytest.mark.slow  # the 3 GiB hole is hashed twice (its manifest entry, the reader's check): 10 s
def test_a_member_declaring_3_gib_is_a_corrupt_shard_from_its_header(tmp_path) -> None:
    folder = write_folder(tmp_path / "shards", sample("Test_Bag_lift_0"), 2, hole=("Test_Bag_lift_1.jpg", 3 * GIB))
    reason = _inspected(run_verb("inspect", str(folder), "--json"))
    assert reason.startswith(f"member Test_Bag_lift_1.jpg declares {3 * GIB} bytes, over the "), reason


@pytest.mark.slow  # as above
def test_a_gnu_long_name_header_declaring_3_gib_is_refused_before_tarfile_reads_it(tmp_path) -> None:
    """tarfile reads a long-name header's data whole to get the name: the header's type is refused first."""
    hole = ("././@LongLink", 3 * GIB, tarfile.GNUTYPE_LONGNAME)
    folder = write_folder(tmp_path / "shards", sample("Test_Bag_lift_0"), 2, hole=hole)
    reason = _inspected(run_verb("inspect", str(folder), "--json"))
    assert reason == "member '././@LongLink' is not a regular file (tar type 'L')", reason


def test_an_npy_header_claiming_10e12_points_is_a_corrupt_shard(tmp_path) -> None:
    claim = io.BytesIO()
    np.lib.format.write_array_header_1_0(claim, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 3)})
    points = claim.getvalue() + np.zeros((N, 3), np.float32).tobytes()
    folder = write_folder(tmp_path / "shards", sample("Test_Bag_lift_0", points), 1)
    reason = _inspected(run_verb("inspect", str(folder), "--json"))
    assert "points.npy header claims shape (1000000000000, 3) float32" in reason, reason

    # the loaders read through the same verified reader: a CorruptShard, not a MemoryError
    code = ("from pipeline.loaders.reading import CorruptShard, read_shard\n"
            "from pipeline.shards.manifest import read_manifest, shard_entries\n"
            f"entry, = shard_entries(read_manifest({str(folder)!r}), {str(folder)!r})\n"
            "try:\n    read_shard(entry, 16)\nexcept CorruptShard as e:\n    print(e)\n")  # fmt: skip
    run = run_python("-c", code)
    assert run.code == 0 and run.stdout.startswith(f"corrupt shard {SHARD}: sample Test_Bag_lift_0: "), run.stderr


def test_an_npy_header_disagreeing_with_its_bytes_is_a_corrupt_shard(tmp_path) -> None:
    claim = io.BytesIO()
    np.lib.format.write_array_header_1_0(claim, {"descr": "<f4", "fortran_order": False, "shape": (N, 3)})
    points = claim.getvalue() + np.zeros((N, 3), np.float32).tobytes() + bytes(4096)  # a tail nobody reads
    folder = write_folder(tmp_path / "shards", sample("Test_Bag_lift_0", points), 1)
    reason = _inspected(run_verb("inspect", str(folder), "--json"))
    assert f"points.npy header claims shape ({N}, 3) float32" in reason and "holds" in reason, reason
