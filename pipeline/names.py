"""Object and affordance vocabularies of AGPIL/PIAD, in the original's order (docs/original.md §2.2).

Order matters: label column i of a point file is AFFORDANCES[i], and the original's
train pairing assumes Point_Train.txt grouped by object in OBJECTS order.
"""

from __future__ import annotations

import re

AFFORDANCES: tuple[str, ...] = (
    "grasp",
    "contain",
    "lift",
    "open",
    "lay",
    "sit",
    "support",
    "wrapgrasp",
    "pour",
    "move",
    "display",
    "push",
    "listen",
    "wear",
    "press",
    "cut",
    "stab",
)
AFFORDANCE_INDEX: dict[str, int] = {a: i for i, a in enumerate(AFFORDANCES)}

# number_dict order of the original (Seen setting).
OBJECTS: tuple[str, ...] = (
    "Earphone",
    "Bag",
    "Chair",
    "Refrigerator",
    "Knife",
    "Dishwasher",
    "Keyboard",
    "Scissors",
    "Table",
    "StorageFurniture",
    "Bottle",
    "Bowl",
    "Microwave",
    "Display",
    "TrashCan",
    "Hat",
    "Clock",
    "Door",
    "Mug",
    "Faucet",
    "Vase",
    "Laptop",
    "Bed",
)
# Unseen setting: training objects in their number_dict order, and the held-out test objects.
UNSEEN_TRAIN_OBJECTS: tuple[str, ...] = (
    "Knife",
    "Refrigerator",
    "Earphone",
    "Bag",
    "Keyboard",
    "Chair",
    "Hat",
    "Door",
    "TrashCan",
    "Table",
    "Faucet",
    "StorageFurniture",
    "Bottle",
    "Bowl",
    "Display",
    "Mug",
    "Clock",
)
UNSEEN_TEST_OBJECTS: tuple[str, ...] = ("Bed", "Dishwasher", "Microwave", "Scissors", "Vase", "Laptop")

# LASO spells one affordance differently and adds `pull` (docs/original.md §2.6).
LASO_AFFORDANCES: tuple[str, ...] = AFFORDANCES + ("pull",)
LASO_ALIASES: dict[str, str] = {"wrap_grasp": "wrapgrasp"}

VIEWS: dict[str, str] = {"full": "Full_view", "partial": "Partial_view", "rotation": "Rotation_view"}
SETTINGS: dict[str, str] = {"seen": "Seen", "unseen": "Unseen"}
SPLITS: dict[str, str] = {"train": "Train", "test": "Test", "val": "Val"}

_KEY_PART = re.compile(r"^[A-Za-z0-9-]+$")


def image_key(split: str, obj: str, affordance: str, n: int | str) -> str:
    """`<Split>_<Object>_<affordance>_<n>`: the key of an image (or test triplet) sample."""
    return _join(SPLITS.get(split, split), obj, affordance, str(n))


def point_key(split: str, obj: str, n: int | str) -> str:
    """`<Split>_<Object>_<n>`: the key of a point cloud."""
    return _join(SPLITS.get(split, split), obj, str(n))


def _join(*parts: str) -> str:
    for part in parts:
        if not _KEY_PART.match(part):
            raise ValueError(f"key part {part!r} must be letters, digits or '-' (no dots, no underscores)")
    return "_".join(parts)


def objects_for(setting: str, split: str) -> tuple[str, ...]:
    """Objects present in a split of a setting (Seen: all 23 in both; Unseen: disjoint)."""
    if setting == "seen":
        return OBJECTS
    if setting == "unseen":
        return UNSEEN_TRAIN_OBJECTS if split == "train" else UNSEEN_TEST_OBJECTS
    raise ValueError(f"setting must be one of {sorted(SETTINGS)}, got {setting!r}")
