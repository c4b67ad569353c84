"""`lma3d <verb> --help-config` lists every config key the verb reads with its type, default and docstring; every
config field has a docstring to list."""

from __future__ import annotations

import importlib

import pytest

from jobs.experiment_config import ExperimentConfig
from jobs.typed_yaml import flatten, to_dict

KEYS = sorted(flatten(to_dict(ExperimentConfig())))


def _help(verb: str, capsys) -> dict[str, list[str]]:
    """{key: [its line, its docstring line]} from the verb's --help-config."""
    with pytest.raises(SystemExit) as done:
        importlib.import_module(f"jobs.verbs.{verb}").main(["--help-config"])
    assert done.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    listed: dict[str, list[str]] = {}
    for line, doc in zip(lines, lines[1:]):
        key = line.split(" ", 1)[0]
        if key in KEYS:
            listed[key] = [line, doc]
    return listed


@pytest.mark.parametrize(
    ("verb", "sections", "not_used"),
    [
        ("train", ("workdir", "dataset", "data.", "model.", "train.", "mlflow."), ("eval.", "serve.")),
        ("sweep", ("workdir", "dataset", "data.", "model.", "train.", "mlflow."), ("eval.", "serve.")),
        ("eval", ("eval.", "data.shards", "data.on_corrupt_shard", "mlflow.tracking_uri", "mlflow.experiment"),
         ("train.", "serve.", "model.", "data.batch_size")),
        ("serve", ("serve.", "mlflow.tracking_uri", "workdir"), ("train.", "eval.", "data.", "mlflow.tags")),
    ],
)  # fmt: skip
def test_help_config_lists_every_key_the_verb_reads_with_type_default_and_doc(capsys, verb, sections, not_used):
    listed = _help(verb, capsys)
    expected = [k for k in KEYS if k.startswith(sections)]
    assert expected and sorted(k for k in listed if k.startswith(sections)) == expected
    assert not [k for k in listed if k.startswith(not_used)]
    for key, (line, doc) in listed.items():
        assert "  type " in line and "  default " in line, line
        assert doc.startswith("    ") and len(doc.strip()) > 10, (key, doc)


def test_the_default_shown_is_the_default(capsys):
    listed = _help("train", capsys)
    assert listed["train.lr"][0].endswith("default 0.0001")
    assert "type fp32 | bf16 | fp16" in listed["model.backbone_dtype"][0]
    assert listed["model.sa1_mlps"][0].endswith("default [[32, 32, 64], [64, 64, 128], [64, 96, 128]]")
    assert "(emb_dim, emb_dim)" in listed["model.fp1_mlp"][1]  # unset by default: the docstring says what it is


def test_every_config_field_has_a_docstring():
    from jobs.config_help import field_doc

    missing = [key for key in KEYS if not field_doc(key)]
    assert not missing, f"{len(missing)} config fields without a docstring: {missing}"
