"""The one record type every raw-format reader yields, and the rejection it yields instead."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Record:
    """One raw sample, whatever the source format.

    Kinds, by which fields are set:
    - image sample (train): image, affordance, instruction; xyz/labels None.
    - point cloud (train point bank): xyz, labels [N,17]; image/affordance/instruction None.
    - triplet (test; LASO any split): xyz, labels, affordance, instruction, and image unless
      the format has none (LASO).
    """

    key: str  # dot-free, stable: `<Split>_<Object>_<affordance>_<n>` or `<Split>_<Object>_<n>`
    split: str  # "train" | "test" | "val"
    object: str
    affordance: str | None
    image: bytes | None  # encoded JPEG/PNG bytes as read from disk
    xyz: np.ndarray | None  # [N,3] float32, raw coordinates
    labels: np.ndarray | None  # [N,17] float32 (all affordance columns) or [N] (one column)
    instruction: str | None
    sources: tuple[str, ...]  # the raw files this record came from
    shape_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific (PIAD boxes, ...)

    @property
    def kind(self) -> str:
        if self.xyz is None:
            return "image"
        if self.image is None and self.affordance is None:
            return "points"
        return "triplet"

    def label_column(self) -> np.ndarray:
        """The GT of this record's affordance: labels[:, index] for [N,17] labels, else labels."""
        from pipeline.names import AFFORDANCE_INDEX, LASO_AFFORDANCES

        if self.labels is None or self.affordance is None:
            raise ValueError(f"{self.key}: record has no labels or no affordance")
        if self.labels.ndim == 1:
            return self.labels
        columns = AFFORDANCE_INDEX if self.labels.shape[1] == 17 else {a: i for i, a in enumerate(LASO_AFFORDANCES)}
        return self.labels[:, columns[self.affordance]]


@dataclass(frozen=True)
class Rejection:
    """A raw record that failed a check: kept, counted and quarantined, never dropped."""

    key: str
    split: str
    sources: tuple[str, ...]
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "split": self.split, "sources": list(self.sources), "reason": self.reason}
