"""Data: raw-format readers, the synthetic generator, the shard job and the loaders (never imports model/)."""
