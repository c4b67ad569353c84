"""manifest.json and sizes.json are read whole, so a reader refuses one over MANIFEST_MAX_BYTES before reading it
(a sparse file here: its size is declared, its bytes are never allocated)."""

from __future__ import annotations

import resource

import pytest

from pipeline.shards.manifest import MANIFEST_MAX_BYTES, ManifestError, read_manifest


def test_a_manifest_over_the_limit_is_refused_unread(tmp_path):
    with open(tmp_path / "manifest.json", "wb") as f:
        f.truncate(MANIFEST_MAX_BYTES + 1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ManifestError, match=f"{MANIFEST_MAX_BYTES + 1} bytes, more than the {MANIFEST_MAX_BYTES}"):
        read_manifest(tmp_path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 * 1024  # KiB: nothing read
