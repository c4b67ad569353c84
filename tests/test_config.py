import pytest

from jobs.experiment_config import ExperimentConfig
from jobs.typed_yaml import ConfigError, flatten, load, to_dict


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_build_typed_config(tmp_path):
    path = write(tmp_path, "train:\n  lr: 2.0e-4\n  betas: [0.8, 0.9]\nmodel:\n  fidelity: corrected\n")
    cfg = load(ExperimentConfig, path, ["train.lr=3e-4", "data.pairs=2"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.betas == (0.8, 0.9)
    assert cfg.model.fidelity == "corrected"
    assert cfg.data.pairs == 2


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "train:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml.*train\.lrr"):
        load(ExperimentConfig, path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=1.5", "train.epochs must be an integer"),
        ("train.lr=fast", "train.lr must be a number"),
        ("model.fidelity=exact", "model.fidelity must be one of"),
        ("train.use_gpu=3", "train.use_gpu must be true or false"),
        ("model.sa1_radii=0.1", "model.sa1_radii must be a list"),
        ("train.betas=[0.9]", "train.betas must have 2 items"),
    ],
)
def test_wrong_type_is_an_error_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load(ExperimentConfig, None, [override])


def test_component_validation_is_reported_with_file(tmp_path):
    path = write(tmp_path, "model:\n  image_size: 100\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml.*multiple of 32"):
        load(ExperimentConfig, path)


def test_malformed_override_is_an_error():
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        load(ExperimentConfig, None, ["train.lr"])


def test_flatten_gives_dotted_keys():
    flat = flatten(to_dict(ExperimentConfig()))
    assert flat["train.lr"] == pytest.approx(1e-4)
    assert flat["model.sa1_radii"] == [0.1, 0.2, 0.4]


def test_a_config_extends_its_base_section_by_section(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "base.yaml").write_text("train: {lr: 0.001, epochs: 7}\ndata: {view: full}\n")
    (tmp_path / "exp.yaml").write_text("base: recipes/base.yaml\ntrain: {epochs: 3}\n")
    cfg = load(ExperimentConfig, tmp_path / "exp.yaml", ["train.seed=5"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.seed, cfg.data.view) == (0.001, 3, 5, "full")


def test_a_base_chain_that_leads_back_to_itself_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="leads back to itself"):
        load(ExperimentConfig, tmp_path / "a.yaml")


def test_a_missing_base_names_the_file(tmp_path):
    (tmp_path / "exp.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml: cannot read config file"):
        load(ExperimentConfig, tmp_path / "exp.yaml")


def test_print_config_of_a_verb_that_loads_its_model_leaves_the_unused_model_section_out(capsys):
    from jobs.verbs.eval import main as eval_main

    with pytest.raises(SystemExit) as done:
        eval_main(["--checkpoint", "ckpt", "--print-config", "model.backbone_path=/m", "eval.batch_size=3"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "\nmodel:" not in printed and "model.backbone_path=/m" in printed.splitlines()[0]
    assert "batch_size: 3" in printed
