"""A process validates a shard folder's manifest once (the driver's checks, every epoch's loaders and validation
read it): the same bytes are not checked against the folder again, other bytes always are."""

from __future__ import annotations

import json

import pytest
from tiny import synth_shards

from pipeline.shards import manifest as manifest_module
from pipeline.shards.manifest import ManifestError, read_manifest


@pytest.fixture()
def counted(monkeypatch) -> list[int]:
    calls = []
    real = manifest_module.validate
    monkeypatch.setattr(manifest_module, "validate", lambda m, f: (calls.append(1), real(m, f))[1])
    return calls


def test_the_same_manifest_is_validated_once_and_each_caller_gets_its_own_copy(tmp_path, counted):
    shards = synth_shards(tmp_path)
    first = read_manifest(shards)
    first["splits"]["train"]["samples"] = -1  # a caller's edit stays its own
    assert read_manifest(shards) == read_manifest(str(shards)) != first
    assert len(counted) == 1


def test_a_manifest_edited_after_a_valid_read_is_refused(tmp_path, counted):
    shards = synth_shards(tmp_path)
    read_manifest(shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["splits"]["train"]["samples"] += 1
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="splits.train.samples"):
        read_manifest(shards)
    assert len(counted) == 2
