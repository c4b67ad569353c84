"""The layout's import rules, read from the source (every import, function-level ones too): model/ is pure torch,
pipeline/ is data, the stages under jobs/ stand alone, and what they share lives in jobs/*.py."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("training", "evaluation", "serving", "sweeping")
SWEEP_ENTRY = "jobs.training.launcher"
"""The one training module sweeps may import: a trial is a training run, started as `lma3d train` starts one."""


def _imports(package: str) -> dict[str, set[str]]:
    """`module path -> every module it imports` for each .py under `package`."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        found[str(path.relative_to(REPO))] = names
    return found


def _offending(package: str, allowed, forbidden_prefixes: tuple[str, ...]) -> list[str]:
    return [
        f"{module} imports {name}"
        for module, names in _imports(package).items()
        for name in sorted(names)
        if name.startswith(forbidden_prefixes) and not allowed(module, name)
    ]


def test_model_imports_neither_the_data_nor_the_jobs_nor_distributed_packages():
    forbidden = ("pipeline", "jobs", "ray", "deepspeed", "mlflow", "webdataset")
    assert _offending("model", lambda m, n: False, forbidden) == []


def test_pipeline_never_imports_model_or_jobs():
    assert _offending("pipeline", lambda m, n: False, ("model", "jobs")) == []


def test_each_stage_imports_no_other_stage_and_sweeps_reach_training_through_its_entry_point():
    problems = []
    for stage in STAGES:
        others = tuple(f"jobs.{other}" for other in STAGES if other != stage)

        def allowed(module: str, name: str, stage: str = stage) -> bool:
            return stage == "sweeping" and (name == SWEEP_ENTRY or name.startswith(f"{SWEEP_ENTRY}."))

        problems += _offending(f"jobs/{stage}", allowed, others)
    assert problems == []


def test_the_shared_modules_import_no_stage_but_the_stage_configs_they_compose():
    shared = {module: names for module, names in _imports("jobs").items() if module.count("/") == 1}
    stages = tuple(f"jobs.{stage}" for stage in STAGES)
    problems = [
        f"{module} imports {name}"
        for module, names in shared.items()
        for name in sorted(names)
        if name.startswith(stages)
        and not (module == "jobs/experiment_config.py" and name.split(".")[2].endswith("_config"))
    ]
    assert problems == []


def test_docs_architecture_names_every_module():
    """Each module's file name appears in docs/architecture.md (a text check: the page lists the layout)."""
    page = (REPO / "docs" / "architecture.md").read_text()
    modules = [p for package in ("model", "pipeline", "jobs") for p in (REPO / package).rglob("*.py")]
    unlisted = [str(p.relative_to(REPO)) for p in modules if p.name != "__init__.py" and p.name not in page]
    assert unlisted == []
