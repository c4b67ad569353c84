"""The shards are WebDataset tars: the `webdataset` library's own reader reads every shard of a folder the shard job
wrote, sample for sample and byte for byte what the project's verifying reader returns."""

from __future__ import annotations

import webdataset as wds
from tiny import NUM_POINTS

from pipeline.loaders.reading import read_shard
from pipeline.shards.config import ShardConfig
from pipeline.shards.job import run as shard
from pipeline.shards.manifest import read_manifest, shard_entries
from pipeline.synth.config import SynthConfig
from pipeline.synth.generate import generate


def test_webdatasets_own_reader_reads_every_shard_as_the_project_reader_does(tmp_path):
    generate(SynthConfig(out=str(tmp_path / "raw"), train_images=8, test_samples=4, points_per_object=3,
                         num_points=NUM_POINTS, image_size=32))  # fmt: skip
    out = tmp_path / "shards"
    shard(tmp_path / "raw", "agpil", out, ShardConfig(samples_per_shard=3), num_points=NUM_POINTS, use_ray=False)
    entries = shard_entries(read_manifest(out), out)
    assert {e.split for e in entries} == {"train", "test"} and len(entries) >= 4
    for entry in entries:
        ours = read_shard(entry, NUM_POINTS)
        theirs = list(wds.WebDataset(str(entry.path), shardshuffle=False, empty_check=False))
        assert [s["__key__"] for s in theirs] == [s["__key__"] for s in ours], entry.name
        for mine, read in zip(ours, theirs):
            members = {k: v for k, v in mine.items() if not k.startswith("__")}
            assert {k: v for k, v in read.items() if not k.startswith("__")} == members, mine["__key__"]
            assert "jpg" in members and "json" in members
