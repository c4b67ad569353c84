"""Shard folders on object storage, against a real S3 endpoint (moto's server on 127.0.0.1, spoken to by
unmodified pyarrow and boto3): the shard job writes there, the loaders stream from there with the same
verification, the point bank comes through a node cache, and a bad endpoint, bucket or object is one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from servers import S3_KEYS, s3_server
from tiny import NUM_POINTS

from jobs.entry import UserError
from jobs.preflight import shard_folder
from pipeline.loaders import eval_loader, train_loader
from pipeline.loaders.config import DataConfig
from pipeline.loaders.reading import CorruptShard, iter_samples
from pipeline.shards.config import ShardConfig
from pipeline.shards.job import run as shard
from pipeline.shards.manifest import read_manifest, shard_entries
from pipeline.storage import Folder, StorageError
from pipeline.synth.config import SynthConfig
from pipeline.synth.generate import generate

BUCKET = "lma3d"
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("s3_storage")]  # a server and several shard runs: ~15 s


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The endpoint's environment, set in this process for the module (pyarrow reads AWS_ENDPOINT_URL)."""
    with s3_server(tmp_path_factory.mktemp("s3"), buckets=(BUCKET, "lma3d-other")) as env:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    generate(SynthConfig(out=str(root), train_images=12, test_samples=5, points_per_object=3,
                         num_points=NUM_POINTS, image_size=64))  # fmt: skip
    return root


@pytest.fixture(scope="module")
def both(s3, raw, tmp_path_factory):
    """The same raw dataset sharded to a local folder and to s3://lma3d/shards."""
    cfg = ShardConfig(samples_per_shard=4)
    local = tmp_path_factory.mktemp("local") / "shards"
    shard(raw, "agpil", local, cfg, num_points=NUM_POINTS, use_ray=False)
    remote = f"s3://{BUCKET}/datasets/shards"
    shard(raw, "agpil", remote, cfg, num_points=NUM_POINTS, use_ray=False)
    return local, remote


def _client(s3):
    import boto3

    return boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], region_name="us-east-1")


def test_shards_written_to_s3_are_the_bytes_of_a_local_run_and_nothing_else(both, s3):
    local, remote = both
    ours, theirs = read_manifest(local), read_manifest(remote)
    assert [s["sha256"] for s in theirs["shards"]] == [s["sha256"] for s in ours["shards"]]
    assert theirs["point_bank"]["sha256"] == ours["point_bank"]["sha256"]
    listed = _client(s3).list_objects_v2(Bucket=BUCKET, Prefix="datasets/shards/")["Contents"]
    # "" is the empty folder-marker object pyarrow writes when it deletes a folder's last object (the bank chunks)
    names = sorted(o["Key"].removeprefix("datasets/shards/") for o in listed if o["Key"] != "datasets/shards/")
    local_names = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    assert names == local_names  # no bank chunk, partial or lock object left behind
    assert all(S3_KEYS["AWS_SECRET_ACCESS_KEY"] not in json.dumps(m) for m in (theirs,))


def test_every_sample_streams_from_s3_verified_as_from_disk(both):
    local, remote = both
    mine = [s for e in shard_entries(read_manifest(local), local) for s in iter_samples(e)]
    streamed = [s for e in shard_entries(read_manifest(remote), remote) for s in iter_samples(e)]
    strip = lambda s: {k: v for k, v in s.items() if k != "__url__"}  # noqa: E731
    assert [strip(s) for s in streamed] == [strip(s) for s in mine] and len(mine) == 12 + 5


def test_train_and_eval_loaders_give_the_same_batches_from_s3(both, tmp_path, monkeypatch):
    monkeypatch.setenv("LMA3D_CACHE_DIR", str(tmp_path / "cache"))
    local, remote = both

    def batches(shards: str, loader) -> list[dict]:
        cfg = DataConfig(shards=shards, batch_size=2, eval_batch_size=2, pairs=2, num_workers=0)
        return list(loader(cfg))

    for make in (lambda c: train_loader(c, 32, 0, 1, epoch=1), lambda c: eval_loader(c, 32, 0, 1)):
        ours, theirs = batches(str(local), make), batches(remote, make)
        assert len(ours) == len(theirs) > 0
        for a, b in zip(ours, theirs):
            assert a["key"] == b["key"]
            np.testing.assert_array_equal(a["points"].numpy(), b["points"].numpy())
            np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    sha = read_manifest(remote)["point_bank"]["sha256"]
    assert [p.name for p in (tmp_path / "cache" / "banks").glob("*.arrow")] == [f"{sha}.arrow"]


def test_the_bank_cache_refetches_nothing_and_evicts_the_oldest_over_its_limit(both, tmp_path, monkeypatch):
    from pipeline.loaders.bank_cache import fetch_bank

    _, remote = both
    cache = tmp_path / "cache" / "banks"
    monkeypatch.setenv("LMA3D_CACHE_DIR", str(tmp_path / "cache"))
    entry = read_manifest(remote)["point_bank"]
    cache.mkdir(parents=True)
    stale = cache / f"{'0' * 64}.arrow"
    stale.write_bytes(b"x" * entry["bytes"])
    os.utime(stale, (1, 1))
    monkeypatch.setenv("LMA3D_CACHE_MAX_GB", str(1.5 * entry["bytes"] / (1 << 30)))
    first = fetch_bank(Folder(remote), "points.arrow", entry)
    assert not stale.exists() and first.read_bytes()  # evicted: both would exceed 1.5 banks
    mtime = first.stat().st_mtime_ns
    assert fetch_bank(Folder(remote), "points.arrow", entry) == first and first.stat().st_size == entry["bytes"]
    assert first.stat().st_mtime_ns >= mtime
    monkeypatch.setenv("LMA3D_CACHE_MAX_GB", str(0.5 * entry["bytes"] / (1 << 30)))
    with pytest.raises(ValueError, match="more than the bank cache's limit"):
        fetch_bank(Folder(remote), "points.arrow", {**entry, "sha256": "1" * 64})


def test_an_object_replaced_after_sharding_is_a_corrupt_shard(both, s3, raw):
    _, remote = both
    copy = f"s3://{BUCKET}/replaced/shards"
    shard(raw, "agpil", copy, ShardConfig(samples_per_shard=4), num_points=NUM_POINTS, use_ray=False)
    entry = shard_entries(read_manifest(copy), copy)[0]
    key = f"replaced/shards/{entry.name}"
    body = bytearray(_client(s3).get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[700] ^= 0xFF  # same size, one byte inside the first member
    _client(s3).put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    with pytest.raises(CorruptShard, match=f"corrupt shard {entry.name}: sha256 differs"):
        list(iter_samples(entry))


def test_a_bank_replaced_in_the_bucket_is_refused_before_it_is_cached(both, s3, raw, tmp_path, monkeypatch):
    from pipeline.loaders.bank import open_bank

    monkeypatch.setenv("LMA3D_CACHE_DIR", str(tmp_path / "cache"))
    copy = f"s3://{BUCKET}/bank-replaced/shards"
    shard(raw, "agpil", copy, ShardConfig(samples_per_shard=4), num_points=NUM_POINTS, use_ray=False)
    key = "bank-replaced/shards/points.arrow"
    body = bytearray(_client(s3).get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[-100] ^= 0xFF
    _client(s3).put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    with pytest.raises(CorruptShard, match="points.arrow: sha256 differs"):
        open_bank(copy, read_manifest(copy))
    assert not list((tmp_path / "cache" / "banks").glob("*.arrow"))


def test_a_missing_bucket_or_folder_is_one_line_before_anything_starts(both):
    with pytest.raises(UserError, match="^data.shards s3://no-such-bucket/shards: bucket 'no-such-bucket' does not"):
        shard_folder("s3://no-such-bucket/shards", "data.shards", ("train",))
    with pytest.raises(UserError, match="^data.shards s3://lma3d-other/shards: no such folder"):
        shard_folder("s3://lma3d-other/shards", "data.shards", ("train",))
    assert shard_folder(both[1], "data.shards", ("train", "test"))["format_version"] == 2


def test_an_endpoint_that_does_not_answer_is_one_line(monkeypatch):
    from servers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    for key, value in S3_KEYS.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError) as refused:
        shard_folder("s3://lma3d/shards", "data.shards", ("train",))
    line = str(refused.value)
    assert line.startswith("data.shards s3://lma3d/shards: ") and "connect" in line.lower() and "\n" not in line
    assert S3_KEYS["AWS_SECRET_ACCESS_KEY"] not in line


def test_a_folder_travels_as_its_uri_alone(both):
    import pickle

    data = pickle.dumps(Folder(both[1]))
    assert S3_KEYS["AWS_SECRET_ACCESS_KEY"].encode() not in data and S3_KEYS["AWS_ACCESS_KEY_ID"].encode() not in data
    assert pickle.loads(data).size("manifest.json") > 0


class _Dropping:
    """The folder's real S3 filesystem, except that reads of an opened object raise the error a dropped
    connection gives on every call in `fails` (or on all calls)."""

    def __init__(self, fs, fails=lambda n: n % 2 == 0) -> None:
        self.fs, self.fails, self.calls, self.opened = fs, fails, 0, []

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def open_input_file(self, path):
        real = self.fs.open_input_file(path)
        outer = self

        class File:
            def seek(self, position):
                outer.opened.append(position)
                return real.seek(position)

            def readinto(self, buffer):
                outer.calls += 1
                if outer.fails(outer.calls):
                    raise OSError("AWS Error NETWORK_CONNECTION during GetObject operation: connection reset")
                return real.readinto(buffer)

            def close(self):
                real.close()

        return File()


def test_a_read_interrupted_mid_object_resumes_where_it_stopped(both, monkeypatch):
    import hashlib

    from pipeline import storage

    monkeypatch.setattr(storage, "BACKOFF_S", 0.0)
    _, remote = both
    entry = shard_entries(read_manifest(remote), remote)[0]
    entry.folder.fs = dropping = _Dropping(entry.folder.fs)
    with entry.folder.open_stream(entry.name, buffer_size=4096) as stream:
        data = b"".join(iter(lambda: stream.read(4096), b""))  # as the tar reader reads: piece by piece
    assert hashlib.sha256(data).hexdigest() == entry.sha256 and len(data) == entry.bytes
    # each reopen continues at the byte reached: never from the start again
    assert dropping.opened[0] == 0 and len(set(dropping.opened)) > 2 and dropping.opened == sorted(dropping.opened)


def test_an_endpoint_gone_mid_read_fails_with_one_line_after_bounded_retries(both, monkeypatch):
    from pipeline import storage

    monkeypatch.setattr(storage, "BACKOFF_S", 0.0)
    _, remote = both
    entry = shard_entries(read_manifest(remote), remote)[0]
    entry.folder.fs = dropping = _Dropping(entry.folder.fs, fails=lambda n: True)
    with pytest.raises(StorageError, match=rf"^{remote}/{entry.name}: .*connection reset \(after 4 attempts\)$"):
        list(iter_samples(entry))
    assert dropping.calls == storage.READ_ATTEMPTS


def test_lma3d_shard_and_inspect_take_s3_uris(s3, raw, capsys):
    from jobs.verbs.inspect import main as inspect_main
    from jobs.verbs.shard import main as shard_main

    out = f"s3://{BUCKET}/cli/shards"
    args = ["--source", str(raw), "--out", out, "--num-points", str(NUM_POINTS), "--samples-per-shard", "4"]
    assert shard_main([*args, "--no-ray"]) == 0
    assert shard_main([*args, "--no-ray"]) == 2  # exists: refused without --overwrite
    capsys.readouterr()
    assert inspect_main([out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verification"]["bad"] == [] and report["verification"]["samples"] == 12 + 5
    assert inspect_main(["s3://no-such-bucket/shards"]) == 2
    assert "bucket 'no-such-bucket' does not exist" in capsys.readouterr().err


def test_refused_credentials_are_one_line_before_ray_or_mlflow_start(raw, tmp_path, capsys, monkeypatch):
    from unittest import mock

    from tiny import tiny_overrides

    from jobs.verbs.train import main as train_main

    with s3_server(tmp_path / "s3", buckets=("lma3d",), auth=True) as env:  # checks every request's key
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        shards = "s3://lma3d/shards"
        shard(raw, "agpil", shards, ShardConfig(samples_per_shard=4), num_points=NUM_POINTS, use_ray=False)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        argv = tiny_overrides(**{"data.shards": shards, "workdir": str(tmp_path / "work")})
        with (  # reaching either would end as exit 1 with a traceback, not 2
            mock.patch("pipeline.ray_session.ensure_ray", side_effect=AssertionError("Ray reached first")),
            mock.patch("jobs.tracking.create_run", side_effect=AssertionError("MLflow run created first")),
        ):
            code = train_main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"lma3d train: error: data.shards {shards}: ") and "credentials were refused" in lines[0]
    assert env["AWS_SECRET_ACCESS_KEY"] not in lines[0] and "not-the-secret" not in lines[0]
