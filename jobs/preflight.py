"""Driver-side checks of every path a job reads, before Ray, MLflow or DeepSpeed start.

A missing or foreign input found by a worker minutes later, as a traceback, is the costly way to learn it;
here it is one line (UserError: exit 2) within seconds, for local folders and object-storage URIs alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.entry import UserError

PRESET_BACKBONES = ("tiny", "minilm", "llava-1.6-vicuna-7b")


def shard_folder(shards: str, key: str, splits: tuple[str, ...]) -> dict[str, Any]:
    """The validated manifest (pipeline.shards.manifest) of a shard folder, local or on object storage, whose
    `splits` have samples and whose listed files exist (one listing, not a request per shard); the bytes are
    checked against their sha256 by the readers as they stream them. An unreachable endpoint, refused
    credentials or a missing bucket: one line."""
    import pyarrow.fs as pafs

    from pipeline.shards.manifest import BANK_FILE, read_manifest, split_entries
    from pipeline.storage import Folder, StorageError, check_reachable

    try:
        check_reachable(shards, key)
        folder = Folder(shards)
        if not folder.exists():
            raise UserError(f"{key} {shards}: no such folder (run lma3d shard first)")
        manifest = read_manifest(shards)
        entries = {split: split_entries(manifest, folder, split) for split in splits}
        listed = folder.fs.get_file_info(pafs.FileSelector(folder.root, recursive=True))
    except (StorageError, FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    present = {info.path.removeprefix(folder.root + "/") for info in listed if info.type == pafs.FileType.File}
    for split, mine in entries.items():
        if not sum(e.samples for e in mine):
            raise UserError(f"{folder.where('manifest.json')}: no {split} samples "
                            f"(splits: {', '.join(manifest['splits'])})")  # fmt: skip
        missing = next((e for e in mine if e.name not in present), None)
        if missing:
            raise UserError(f"{missing.path}: listed in manifest.json but missing")
    if "train" in splits and BANK_FILE not in present:
        raise UserError(f"{folder.where(BANK_FILE)}: missing (the train point clouds)")
    return manifest


def pairs_available(manifest: dict[str, Any], pairs: int, shards: str) -> None:
    """Every object of the train images has at least `data.pairs` clouds in the point bank."""
    if not manifest:
        return
    bank = (manifest.get("point_bank") or {}).get("objects") or {}
    needed = (manifest["splits"].get("train") or {}).get("objects") or {}
    for obj in sorted(needed):
        entry = bank.get(obj)
        count = int(entry[1]) if isinstance(entry, list) and len(entry) == 2 else 0
        if count < pairs:
            raise UserError(
                f"data.pairs={pairs} but {shards.rstrip('/')}/points.arrow holds {count} clouds of {obj!r} "
                f"(each train image draws {pairs} distinct clouds of its object)"
            )


def model_files(model: Any) -> None:
    """Local weights a ModelConfig names: model.backbone_path, a non-preset backbone. (model.resnet_weights is
    training's alone, checked by jobs.training.pretrained_check: a trained model carries its image encoder.)"""
    if model.backbone_path and not Path(model.backbone_path).is_dir():
        raise UserError(f"model.backbone_path {model.backbone_path}: no such folder")
    if model.backbone not in PRESET_BACKBONES and not Path(model.backbone).is_dir():
        raise UserError(
            f"model.backbone {model.backbone!r}: neither a preset ({', '.join(PRESET_BACKBONES)}) nor a folder"
        )


def output_reachable(location: str, key: str) -> None:
    """An object-storage output's bucket exists and answers (a local folder is created by its writer)."""
    from pipeline.storage import StorageError, check_reachable

    try:
        check_reachable(location, key)
    except StorageError as e:
        raise UserError(str(e)) from None


def train_inputs(cfg: Any) -> None:
    """Everything `lma3d train` will read, checked before it starts anything."""
    splits = ("train", "test") if cfg.train.val_every > 0 else ("train",)
    manifest = shard_folder(cfg.data.shards, "data.shards", splits)
    pairs_available(manifest, cfg.data.pairs, cfg.data.shards)
    output_reachable(cfg.storage_path, "train.storage_path")
    model_files(cfg.model)
    if cfg.model.backbone == "llava-1.6-vicuna-7b" and not cfg.model.backbone_path:
        raise UserError("model.backbone llava-1.6-vicuna-7b needs model.backbone_path (its local weights folder)")
