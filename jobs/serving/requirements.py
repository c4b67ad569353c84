"""The registered model's requirements, derived from the imports of the code it runs, pinned to what is installed.

What is read (source only, parsed with `ast`, nothing imported): the pyfunc's files (pyfunc_code.py,
pyfunc_model.py), every module of model/ (the network and its backbone loaders: transformers, peft, and the package
the MiniLM weights and tokenizer ship in, which model/language.py looks up with importlib.util.find_spec), and the
project modules those reach, followed through every import, function-level ones included (load_context and predict
import inside functions). A hand-kept list went stale: it lacked the MiniLM package, so an environment built from
the model's requirements.txt could not load the demo model.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

PROJECT = ("jobs", "model", "pipeline")  # logged beside the model as code_paths, not installed from an index
ROOT = Path(__file__).resolve().parents[2]
ENTRIES = (Path(__file__).with_name("pyfunc_code.py"), Path(__file__).with_name("pyfunc_model.py"), ROOT / "model")
# Reached in the source only on paths a registered model never takes; each would cost a serving image a lot.
LEFT_OUT = {
    "deepspeed": "jobs.loading consolidates DeepSpeed checkpoints with it; a registered model is an exported folder",
}
SENTENCEPIECE_DISTRIBUTIONS = ("sentencepiece", "protobuf")
"""What transformers imports, inside itself and so out of the walk's sight, to read a SentencePiece
`tokenizer.model` (a LLaMA / LLaVA backbone folder): measured, loading such a folder's tokenizer imports
sentencepiece and google.protobuf."""
_LOOKUPS = {"find_spec", "import_module"}  # importlib calls whose constant argument names a module


def imported_names(source: str) -> set[str]:
    """Dotted names the source imports: import statements (absolute ones) at any depth, and the constant argument
    of importlib's find_spec / import_module calls."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from jobs import loading`
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called in _LOOKUPS and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def _project_file(dotted: str) -> Path | None:
    path = ROOT.joinpath(*dotted.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def reached_files(entries: tuple[Path, ...] = ENTRIES) -> list[Path]:
    """The entries (files, or folders read whole) and every project module their imports reach, transitively;
    importing `a.b.c` runs a/__init__.py and a/b/__init__.py too."""
    todo = [f for e in entries for f in (sorted(e.rglob("*.py")) if e.is_dir() else [e])]
    seen: set[Path] = set()
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        for name in imported_names(file.read_text()):
            parts = name.split(".")
            if parts[0] in PROJECT:
                todo += [f for i in range(1, len(parts) + 1) if (f := _project_file(".".join(parts[:i])))]
    return sorted(seen)


def third_party_modules(files: list[Path]) -> set[str]:
    """Top-level names of the modules the files import that are neither the standard library nor the project."""
    tops = {name.split(".")[0] for file in files for name in imported_names(file.read_text())}
    return {t for t in tops if t not in sys.stdlib_module_names and t not in PROJECT and t != "__future__"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution_of(module: str, installed: dict[str, list[str]] | None = None) -> str:
    """The installed distribution that provides top-level module `module` (PIL -> pillow, yaml -> PyYAML); where
    several provide it (mlflow, mlflow-skinny), the one of the same name. Raises LookupError when none is installed."""
    candidates = (installed if installed is not None else packages_distributions()).get(module, [])
    same = [d for d in candidates if _normal(d) == _normal(module)]
    if not candidates:
        raise LookupError(f"no installed distribution provides the module {module!r}")
    return same[0] if same else sorted(candidates)[0]


def backbone_distributions(backbone_folder: str | Path | None) -> set[str]:
    """Distributions the backbone's own files need beyond the code: SENTENCEPIECE_DISTRIBUTIONS for a folder whose
    tokenizer is a SentencePiece model (the presets tiny and minilm have none: no folder)."""
    if backbone_folder and Path(backbone_folder, "tokenizer.model").is_file():
        return set(SENTENCEPIECE_DISTRIBUTIONS)
    return set()


def pinned_requirements(extra_distributions: set[str] = frozenset()) -> list[str]:
    """`name==version` (local build tags such as +cpu dropped: no index serves them) for every distribution that
    provides a module the model's code imports, LEFT_OUT excepted, and `extra_distributions`; sorted."""
    installed = packages_distributions()
    pins = set()
    needed = [distribution_of(module, installed) for module in third_party_modules(reached_files()) - set(LEFT_OUT)]
    for dist in [*needed, *sorted(extra_distributions)]:
        try:
            pins.add(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:  # a metadata-less install: still required, unpinned
            pins.add(dist)
    return sorted(pins, key=str.lower)
