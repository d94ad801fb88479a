from pathlib import Path

import pytest

from ddlm import config_docs
from ddlm.cli import main
from ddlm.config import allowed_values, config_keys, load_config
from ddlm.processes import REGISTRY

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configs.md"


def test_docs_configs_md_is_generated_from_the_dataclasses():
    assert DOCS.read_text() == config_docs.markdown(), "regenerate: ddlm config --markdown > docs/configs.md"


def test_every_key_is_documented_once():
    infos = config_docs.keys()
    assert len({i.key for i in infos}) == len(infos)
    assert {i.key for i in infos} == {k for k in config_keys() if k not in ("model", "data", "optim", "d3pm")}
    for info in infos:
        assert len(info.doc) > 15, info.key
        assert f"| `{info.key}` |" in DOCS.read_text()


def test_enumerated_values_come_from_the_registry_and_are_what_validation_accepts():
    assert allowed_values("process") == tuple(sorted([*REGISTRY, "ar"]))
    for name, cls in REGISTRY.items():
        assert allowed_values("objective", name) == cls.objectives
        assert allowed_values("model.output", name) == cls.network_outputs
        extra = ["t_min=0"] if cls.steps is not None or name == "d3pm" else []  # discrete time: t_min = 0
        for objective in cls.objectives:
            load_config(None, [f"process={name}", f"objective={objective}", *extra])
        for output in cls.network_outputs:
            load_config(None, [f"process={name}", f"model.output={output}", *extra])
    for key in ("schedule", "optim.decay", "device", "parallel", "process"):
        for value in allowed_values(key):
            load_config(None, [f"{key}={value}", *(["t_min=0"] if value == "d3pm" else [])])
        with pytest.raises(ValueError, match=key):
            load_config(None, [f"{key}=nonsense"])


def test_describe_shows_values_defaults_and_meanings():
    text = config_docs.describe_text("demo-mdm", ["optim.lr=3e-4"])
    for info in config_docs.keys():
        assert f" {info.key} = " in text
    assert "* optim.lr = 0.0003   (float; default 0.001)" in text
    assert "  process = mdm   (str; default mdm; one of ar, audm, d3pm, mdm, udm)" in text
    assert "here mdm_elbo; one of mdm_elbo, cross_entropy, masked_cross_entropy, score_entropy for process mdm" in text
    udm = config_docs.describe_text(None, ["process=udm"])
    assert ("  model.output = null   (str | None; default null"
            "; here loo; one of loo, denoiser, score for process udm)") in udm


@pytest.mark.parametrize("override,suggestion", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
    ("lr=1", "unknown config key 'lr'; did you mean 'optim.lr'?"),
    ("model.hiden=3", "unknown config key 'model.hiden'; did you mean 'model.hidden'?"),
    ("max_minute=3", "unknown config key 'max_minute'; did you mean 'max_minutes'?"),
])
def test_misspelt_keys_get_the_closest_key(override, suggestion):
    with pytest.raises(ValueError, match=suggestion.replace("?", r"\?")):
        load_config("demo-mdm", [override])


def test_misspelt_keys_in_yaml_files_too(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("process: udm\ndata: {blok_size: 16}\n")
    with pytest.raises(ValueError, match=r"unknown config key 'data.blok_size'; did you mean 'data.block_size'\?"):
        load_config(path)
    path.write_text("zzzzzz: 1\n")
    with pytest.raises(ValueError, match="unknown config key 'zzzzzz'; expected one of"):
        load_config(path)


def test_config_command(capsys):
    assert main(["config", "demo-ar", "max_steps=7"]) == 0
    out = capsys.readouterr().out
    assert "* max_steps = 7   (int; default 1000)" in out and "* process = ar" in out
    assert main(["config", "--markdown"]) == 0
    assert capsys.readouterr().out == DOCS.read_text()
    assert main(["config", "demo-mdm", "optim.lrr=1"]) == 2
    assert "did you mean 'optim.lr'?" in capsys.readouterr().err
    assert main(["config", "demo-mdm", "--markdown"]) == 2
