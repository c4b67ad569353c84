"""Heat maps as files: coloured PLY (grey → red, the IAGNet/LASO convention) and PNG renders (matplotlib Agg).

A PNG shows the interaction image with its instruction, then each heat map (prediction, and GT when given)
from two fixed viewpoints with a shared colour bar, so renders of the same key are comparable across epochs.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

GREY = np.array([190.0, 190.0, 190.0])
RED = np.array([255.0, 0.0, 0.0])
VIEWS = ((15.0, -60.0), (55.0, 30.0))
"""(elevation, azimuth) in degrees; the y axis is drawn upwards (3D AffordanceNet clouds are y-up)."""
PANEL_INCHES = 3.2
DPI = 100


def heat_colors(values: np.ndarray) -> np.ndarray:
    """[N] scores in [0,1] -> [N,3] uint8 RGB, linear from grey (0) to red (1)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)[:, None]
    return np.rint(GREY * (1.0 - v) + RED * v).astype(np.uint8)


def write_ply(path: str | Path, xyz: np.ndarray, values: np.ndarray) -> Path:
    """ASCII PLY: x y z, red green blue (heat colour) and the score itself as `quality` (MeshLab's name)."""
    xyz = np.asarray(xyz, dtype=np.float32)
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(values) != len(xyz):
        raise ValueError(f"write_ply: xyz {xyz.shape} and values {values.shape} do not match")
    colors = heat_colors(values)
    header = "\n".join(
        [
            "ply",
            "format ascii 1.0",
            "comment lma3d affordance heat map (grey = 0, red = 1)",
            f"element vertex {len(xyz)}",
            "property float x",
            "property float y",
            "property float z",
            "property uchar red",
            "property uchar green",
            "property uchar blue",
            "property float quality",
            "end_header",
        ]
    )
    rows = [
        f"{x:.6f} {y:.6f} {z:.6f} {r} {g} {b} {q:.6f}"
        for (x, y, z), (r, g, b), q in zip(xyz.tolist(), colors.tolist(), values.tolist())
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _colormap():
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("lma3d_heat", [GREY / 255.0, RED / 255.0])


def render_png(
    path: str | Path,
    xyz: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray | None = None,
    image: np.ndarray | None = None,
    instruction: str = "",
    title: str = "",
) -> Path:
    """PNG: [image + instruction] | prediction from VIEWS | GT from VIEWS (when given), one colour bar."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    maps = [("prediction", np.asarray(pred))] + ([("ground truth", np.asarray(gt))] if gt is not None else [])
    with_image = image is not None or bool(instruction)
    columns = int(with_image) + len(maps) * len(VIEWS)
    figure = Figure(figsize=(PANEL_INCHES * columns + 0.6, PANEL_INCHES + 0.6), dpi=DPI)
    grid = figure.add_gridspec(1, columns + 1, width_ratios=[1.0] * columns + [0.06], wspace=0.05)
    cmap = _colormap()
    column = 0
    if with_image:
        axis = figure.add_subplot(grid[0, 0])
        if image is not None:
            axis.imshow(image)
        axis.set_axis_off()
        wrapped = "\n".join(textwrap.wrap(instruction, 34)[:6])
        axis.set_title(wrapped, fontsize=8, loc="left")
        column = 1
    xyz = np.asarray(xyz, dtype=np.float32)
    lo, hi = xyz.min(0), xyz.max(0)
    centre, half = (lo + hi) / 2, float((hi - lo).max()) / 2 or 1.0
    scatter = None
    for name, values in maps:
        for elev, azim in VIEWS:
            axis = figure.add_subplot(grid[0, column], projection="3d")
            # y-up: draw (x, z, y) so the cloud's vertical axis is matplotlib's z.
            scatter = axis.scatter(
                xyz[:, 0], xyz[:, 2], xyz[:, 1], c=values, cmap=cmap, vmin=0.0, vmax=1.0, s=2, depthshade=False
            )
            axis.view_init(elev=elev, azim=azim)
            axis.set_xlim(centre[0] - half, centre[0] + half)
            axis.set_ylim(centre[2] - half, centre[2] + half)
            axis.set_zlim(centre[1] - half, centre[1] + half)
            axis.set_box_aspect((1, 1, 1))
            axis.set_axis_off()
            axis.set_title(f"{name} ({azim:+.0f}°)", fontsize=8)
            column += 1
    figure.colorbar(scatter, cax=figure.add_subplot(grid[0, columns]), label="affordance")
    if title:
        figure.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def display_image(normalized: np.ndarray) -> np.ndarray:
    """An ImageNet-normalised [3,S,S] array back to displayable uint8 [S,S,3]."""
    from pipeline.preprocess import MEAN, STD

    mean, std = MEAN.astype(np.float64)[:, None, None], STD.astype(np.float64)[:, None, None]
    pixels = np.clip((np.asarray(normalized, dtype=np.float64) * std + mean) * 255.0, 0, 255)
    return np.rint(pixels).astype(np.uint8).transpose(1, 2, 0)


def pick_samples(objects: list[str], affordances: list[str], count: int) -> list[int]:
    """Rows to render: objects in name order, taken in turn, each time its next (object, affordance) pair not yet
    shown (pairs in list order), the pair's first row. Spreads `count` figures over classes and affordances, and
    picks the same rows on every evaluation of the same test set."""
    first_row: dict[tuple[str, str], int] = {}
    for row, pair in enumerate(zip(objects, affordances)):
        first_row.setdefault(pair, row)
    queues = {obj: [a for o, a in first_row if o == obj] for obj in sorted(set(objects))}
    picked: list[int] = []
    while len(picked) < count and any(queues.values()):
        for obj, pending in queues.items():
            if pending and len(picked) < count:
                picked.append(first_row[(obj, pending.pop(0))])
    return picked


def render_sample(
    out_dir: str | Path,
    key: str,
    xyz: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray | None = None,
    image: np.ndarray | None = None,
    instruction: str = "",
    title: str = "",
) -> list[Path]:
    """`<key>_Pred.ply`, `<key>_GT.ply` (when gt is given) and `<key>.png` (titled `title`, else the key)."""
    out = Path(out_dir)
    paths = [write_ply(out / f"{key}_Pred.ply", xyz, pred)]
    if gt is not None:
        paths.append(write_ply(out / f"{key}_GT.ply", xyz, gt))
    paths.append(render_png(out / f"{key}.png", xyz, pred, gt, image, instruction, title=title or key))
    return paths
