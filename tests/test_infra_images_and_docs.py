"""infra/ and docs/: the images install the project and run the CLI; every command in docs/cluster.md and
infra/README.md is a real CLI call (verb, flags, config files and override keys).

Text-level checks (no docker, Kubernetes or network)."""

from __future__ import annotations

import importlib
import json
import re

import pytest
from cli_calls import check_cli_call
from infra_files import INFRA, ROOT, dockerfile


def doc_commands() -> dict[str, str]:
    """`lma3d ...` / `python -m jobs....` lines inside the code blocks of the docs, by file and command number."""
    found = {}
    for path in (ROOT / "docs" / "cluster.md", INFRA / "README.md"):
        text, in_code = path.read_text().replace("\\\n", " ") if path.exists() else "", False
        for line in text.splitlines():
            in_code ^= line.lstrip().startswith("```")
            line = line.strip().rstrip(";")
            if in_code and (line.startswith("lma3d ") or line.startswith("python -m jobs.")):
                found[f"{path.name}#{sum(k.startswith(path.name) for k in found) + 1}"] = line
    return found


@pytest.mark.parametrize("where", sorted(doc_commands()))
def test_docs_commands_are_real_cli_calls(where, monkeypatch):
    check_cli_call(doc_commands()[where], monkeypatch)


def test_dockerfiles_install_the_project_and_run_the_cli(capsys):
    for name in ("Dockerfile", "Dockerfile.cpu"):
        text = dockerfile(name)
        assert not re.search(r"^ENTRYPOINT", text, re.M), f"{name}: KubeRay/`ray up` replace the command, no ENTRYPOINT"
        assert re.search(r"pip install \"torch==\$\{TORCH_VERSION\}\" --index-url", text), name
        assert re.search(r"^COPY --chown=ray:users \. /home/ray/lma3d$", text, re.M), f"{name}: copy the repo"
        assert re.search(r"pip install [^\n]*/home/ray/lma3d\s", text), f"{name}: must pip install the copied project"
        cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
        assert cmd == ["lma3d", "--help"] and importlib.import_module("jobs.cli").main(cmd[1:]) == 0
        ignored = (INFRA / "docker" / f"{name}.dockerignore").read_text().split()
        assert {".git", "**/.venv", "work", "**/*.tar"} <= set(ignored)
        assert not {"jobs", "model", "pipeline", "configs", "pyproject.toml", "README.md"} & set(ignored)
    assert "DS_ACCELERATOR=cuda DS_BUILD_CPU_ADAM=1" in dockerfile("Dockerfile")
    assert re.search(r"^ENV [^\n]*DS_ACCELERATOR=cpu", dockerfile("Dockerfile.cpu"), re.M)
    assert re.search(r"ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu$", dockerfile("Dockerfile.cpu"), re.M)
    capsys.readouterr()
