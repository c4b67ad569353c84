"""The point encoder against the real original's `PointNet2_utils.py`, loaded from a copy you fetched (the
project never ships or imports it otherwise):

    git clone https://github.com/cn-hezhu/LMAffordance3D /tmp/LMAffordance3D
    python benchmarks/bench_real_original.py \\
        --utils /tmp/LMAffordance3D/LAVIS/lavis/models/affordance_models/PointNet2_utils.py [--rounds 3]

The paper MSG encoder (the original's three `PointNetSetAbstractionMsg` levels with the arguments its
`Point_Encoder` passes), 6 images x 3 clouds x 2048 points, forward + backward in training mode, timed three
ways in alternating rounds: the real file and benchmarks/reference_original.py both as the original trains (one
forward per cloud slot, 6 clouds each), and ours (one call over the 18 clouds, per-cloud BatchNorm). The first
column tells how far bench_model.py's "original" (the reference) is from the real code on this machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import compare_all, inputs, paper_config  # noqa: E402
from reference_original import original_encoder_pass  # noqa: E402

from model.group_norm_bn import batchnorm_groups  # noqa: E402
from model.lmaffordance3d import build_model  # noqa: E402


def real_encoder(utils_path: str) -> torch.nn.Module:
    """The original's Point_Encoder levels (LMAffordance3D.py: sa1, sa2, sa3; N_p = 64), from its own file."""
    spec = importlib.util.spec_from_file_location("original_pointnet2_utils", utils_path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{utils_path}: not a Python file")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    msg = utils.PointNetSetAbstractionMsg

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sa1 = msg(512, [0.1, 0.2, 0.4], [32, 64, 128], 3, [[32, 32, 64], [64, 64, 128], [64, 96, 128]])
            self.sa2 = msg(128, [0.4, 0.8], [64, 128], 128 + 128 + 64, [[128, 128, 256], [128, 196, 256]])
            self.sa3 = msg(64, [0.2, 0.4], [16, 32], 256 + 256, [[128, 128, 256], [128, 196, 256]])

        def forward(self, xyz: torch.Tensor) -> torch.Tensor:
            return self.sa3(*self.sa2(*self.sa1(xyz, xyz)))[1]

    return Encoder()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utils", help="path of the original's PointNet2_utils.py (without it: skipped)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.utils:  # `make bench` runs every script: this one needs a clone of the original
        print("real original: skipped (pass --utils PATH/PointNet2_utils.py from a clone of cn-hezhu/LMAffordance3D)")
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = paper_config(argparse.Namespace(tiny=False))
    ours, real = build_model(cfg).point_encoder.train(), real_encoder(args.utils).train()
    sizes = [sum(p.numel() for p in m.parameters()) for m in (real, ours)]
    if sizes[0] != sizes[1]:
        raise SystemExit(f"the encoders differ: {sizes[0]} parameters in the original's, {sizes[1]} in ours")
    b, k = 6, 3
    _, points, _, _ = inputs(cfg, b, k)
    clouds = points.reshape(b * k, 3, cfg.num_points)

    def real_step() -> None:
        sum(real(points[:, j]).sum() for j in range(k)).backward()

    def reference_step() -> None:
        original_encoder_pass(ours, points)

    def ours_step() -> None:
        with batchnorm_groups(k):
            ours(clouds)[-1][1].sum().backward()

    medians = compare_all({"real": real_step, "reference": reference_step, "ours": ours_step}, args.rounds)
    print(f"torch {torch.__version__}, {args.threads} threads, medians of {args.rounds} alternating rounds")
    print(f"paper encoder fwd+bwd, {b * k} clouds x {cfg.num_points}, training mode, {sizes[1]} parameters")
    print(f"{'measurement':<52}{'real s':>9}{'this s':>9}{'ratio':>9}")
    for name in ("reference", "ours"):
        label = f"real original vs {'benchmarks/reference_original.py' if name == 'reference' else 'ours'}"
        print(f"{label:<52}{medians['real']:>9.3f}{medians[name]:>9.3f}{medians['real'] / medians[name]:>8.2f}x")


if __name__ == "__main__":
    main()
