"""benchmarks/gpu_check.py on the CPU, in a process where Ray, DeepSpeed, MLflow and WebDataset look absent (as on
the lent GPU machine): every module of `model/` and everything gpu_check imports load without them, and the check
runs its sections at tiny sizes and passes. One subprocess serves both tests (imports take seconds here)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.xdist_group("gpu_check")  # its module fixture is built once, in one test process
REPO = Path(__file__).resolve().parent.parent
SECTIONS = ["forward", "fps", "training", "paper_step", "reference", "point_ops", "eval"]
GPU_CHECK_MODULES = ["gpu_check", "gpu_check_backbones", "gpu_check_common", "gpu_check_correctness",
                     "gpu_check_speed", "reference_original", "step_budget"]  # fmt: skip

# Hide the packages, import every model module and gpu_check's own modules, record what got imported, then run
# the script itself as __main__ (its exit code becomes the process's).
RUN = """
import importlib, json, pkgutil, runpy, sys
sys.path[:0] = [{tests!r}, {benchmarks!r}, {repo!r}]
from hidden_packages import HIDDEN, hide
hide()
import model
names = ["model"] + ["model." + m.name for m in pkgutil.iter_modules(model.__path__)] + {gpu_check_modules!r}
for name in names:
    importlib.import_module(name)
hidden_loaded = sorted(m for m in sys.modules if m.partition(".")[0] in HIDDEN)
blocked = []
for name in HIDDEN:
    try:
        importlib.import_module(name)
    except ImportError:
        blocked.append(name)
with open({imports!r}, "w") as f:
    json.dump({{"imported": names, "hidden_loaded": hidden_loaded, "blocked": blocked}}, f)
sys.argv = ["benchmarks/gpu_check.py", "--out", {out!r}]  # the command as a user types it: no other flag
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    folder = tmp_path_factory.mktemp("gpu_check")
    out, imports = folder / "gpu_check.json", folder / "imports.json"
    code = RUN.format(tests=str(REPO / "tests"), benchmarks=str(REPO / "benchmarks"), repo=str(REPO),
                      gpu_check_modules=GPU_CHECK_MODULES, imports=str(imports), out=str(out),
                      script=str(REPO / "benchmarks" / "gpu_check.py"))  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300)
    return proc, out, imports


def rows(report: dict, section: str) -> list[dict]:
    return report["sections"][section]["rows"]


@pytest.mark.slow  # the whole check at tiny sizes: 13 s
def test_gpu_check_runs_every_section_on_cpu_and_its_checks_pass(cpu_run):
    proc, out, _ = cpu_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["cuda"] is False and report["sizes"] == "tiny" and report["passed"] is True
    assert list(report["sections"]) == SECTIONS
    assert {name: s["status"] for name, s in report["sections"].items()} == dict.fromkeys(SECTIONS, "ok")
    assert "FlopCounterMode" in report["flops_note"]
    # correctness: without CUDA the GPU-vs-CPU comparison says so, and the CPU's fp32 / autocast forwards are
    # compared with its fp64 one, in eval and training mode
    forward = rows(report, "forward")
    assert forward[0]["text"] == "skipped: no CUDA"
    compared = {(r["precision"], r["mode"]) for r in forward[1:]}
    assert compared == {(p, m) for p in ("fp32", "fp16-autocast", "bf16-autocast") for m in ("eval", "train")}
    assert all(r["passed"] and r["max_abs_diff"] <= r["tolerance"] for r in forward[1:])
    fp32_train = next(r for r in forward[1:] if r["precision"] == "fp32" and r["mode"] == "train")
    assert fp32_train["grad_max_rel_diff"] <= fp32_train["grad_tolerance"]
    assert [r["compiled_equals_loop"] for r in rows(report, "fps")] == [True, True, True]
    (training,) = rows(report, "training")
    assert training["passed"] and training["losses"][-1] < training["losses"][0]
    # timings: the step under both autocasts through the meta-built LLaMA path, FLOPs counted, MFU skipped
    model_row, *steps = rows(report, "paper_step")
    assert "LLaMA-7B shape" in model_row["llama"] and model_row["backbone_params"] > 0
    assert [r["precision"] for r in steps] == ["fp16 autocast", "bf16 autocast"]
    assert all(r["s_per_step"] > 0 and r["flops"] > 0 and "MFU: skipped: no CUDA" in r["text"] for r in steps)
    assert rows(report, "reference")[0]["ratio"] > 0
    assert "skipped: no CUDA" in rows(report, "reference")[1]["text"]
    assert {r["what"] for r in rows(report, "point_ops")} == {"fps", "ball_query", "three_nn"}
    assert [r["batch"] for r in rows(report, "eval")] == [1, 8, 32]
    assert "all checks passed" in proc.stdout


@pytest.mark.slow  # shares the run above
def test_model_and_gpu_check_import_without_ray_deepspeed_mlflow_webdataset(cpu_run):
    proc, _, imports = cpu_run
    assert imports.exists(), proc.stderr[-3000:]
    report = json.loads(imports.read_text())
    assert report["blocked"] == ["ray", "deepspeed", "mlflow", "webdataset"]  # the hiding works
    assert report["hidden_loaded"] == []
    assert {"model.language", "model.lmaffordance3d", "model.pretrained", "model.metrics"} <= set(report["imported"])
    assert set(GPU_CHECK_MODULES) <= set(report["imported"])


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check

    return gpu_check


def test_a_raising_section_is_recorded_and_a_spent_budget_skips_the_rest(gpu_check, monkeypatch):
    from gpu_check_common import Context, Device, Row, Sizes

    def raising(ctx, rows):
        rows.append(Row("measured before the error", "1 s"))
        raise RuntimeError("boom")

    def failing(ctx, rows):
        rows.append(Row("a check", "off by one", passed=False))

    monkeypatch.setitem(gpu_check.SECTIONS, "raising", raising)
    monkeypatch.setitem(gpu_check.SECTIONS, "failing", failing)
    ctx = Context(Device(torch.device("cpu")), Sizes.tiny(None, 16), deadline=time.monotonic() + 60)
    report = {"sections": {}}
    gpu_check.run_section("raising", ctx, report)
    gpu_check.run_section("failing", ctx, report)
    ctx.deadline = time.monotonic() - 1
    gpu_check.run_section("fps", ctx, report)
    raised, failed, skipped = (report["sections"][n] for n in ("raising", "failing", "fps"))
    assert raised["status"] == "error" and raised["error"] == "RuntimeError: boom"
    assert [r["name"] for r in raised["rows"]] == ["measured before the error"]
    assert failed["status"] == "failed"
    assert skipped["status"] == "skipped" and "time budget" in skipped["note"] and skipped["rows"] == []


def test_build_model_takes_a_backbone_built_by_the_caller(gpu_check):
    """The hook gpu_check builds its 7B-shaped model through: the given module is the backbone, cast and frozen per
    the config, and left out of the trainable weights."""
    from gpu_check_backbones import LlamaShape, synthetic_backbone
    from tiny import tiny_model_config

    from model.lmaffordance3d import build_model

    shape = LlamaShape.vicuna_7b(1).scaled(1, 32)  # hidden 128, 1 layer: built on meta, materialised on the CPU
    backbone = synthetic_backbone(shape, "cpu", torch.float16, "7b-shape")
    net = build_model(tiny_model_config(backbone_dtype="fp16"), pretrained=False, backbone=backbone).eval()
    assert net.language.backbone is backbone.model and net.backbone_id == "7b-shape"
    assert all(not p.requires_grad and p.dtype == torch.float16 for p in backbone.model.parameters())
    assert net.language.adapter_up[-1].out_features == shape.hidden
    assert not any(k.startswith("language.backbone.") for k in net.trainable_state_dict())
    image, points = torch.randn(2, 3, 64, 64), torch.rand(2, 3, 256)
    probs = net(image, points, ["hold the mug", "open the bottle"])
    assert probs.shape == (2, 256) and bool(torch.isfinite(probs).all())
