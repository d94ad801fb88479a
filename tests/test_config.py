import pytest

from ddlm.config import TrainConfig, load_config


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("process: udm\nmodel: {preset: tiny, hidden: 64}\noptim: {lr: 0.01}\n")
    cfg = load_config(path, ["optim.lr=3e-4", "max_steps=7", "model.output=denoiser", "data.block_size=16"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.process == "udm" and cfg.model.hidden == 64 and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.max_steps == 7 and cfg.model.output == "denoiser" and cfg.data.block_size == 16
    assert cfg.resolved_objective == "udm_elbo"
    assert load_config(None).process == "mdm"


def test_shipped_configs_load():
    from ddlm.config import packaged_configs

    names = packaged_configs()
    assert {"demo-mdm", "demo-udm", "demo-audm", "demo-ar", "owt-mdm-small", "lm1b-mdm-small", "demo-d3pm",
            "lm1b-d3pm-small", "demo-sedd", "owt-sedd-small"} <= set(names)
    for name in names:
        assert load_config(name).process in ("mdm", "udm", "audm", "ar", "d3pm")
    for name in ("demo-sedd", "owt-sedd-small"):  # SEDD: the absorbing graph, a score network, score entropy
        cfg = load_config(name)
        assert (cfg.process, cfg.model.output, cfg.model.score_scaling, cfg.resolved_objective) == (
            "mdm", "score", "noise_level", "score_entropy")
    uniform = load_config("demo-sedd", ["process=udm", "model.score_scaling=none"])
    assert uniform.model.output == "score" and uniform.resolved_objective == "score_entropy"


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["optim.lrr=1"], "unknown config key 'optim.lrr'"),
        (["process=sedd"], "config key 'process' is 'sedd', expected one of"),
        (["objective=udm_elbo"], "config key 'objective' is 'udm_elbo', expected one of .* for process 'mdm'"),
        (["model.output=loo"], "config key 'model.output' is 'loo'"),
        (["batch_size=0"], "config key 'batch_size' is 0, expected an integer >= 1"),
        (["batch_size=10", "grad_accum=4"], "config key 'batch_size' is 10, expected a multiple of grad_accum"),
        (["max_steps=ten"], "config key 'max_steps' is 'ten'"),
        (["data.val_fraction=0.9"], "data.val_fraction"),
        (["lr"], "must look like key=value"),
        (["parallel=zero3"], "config key 'parallel' is 'zero3', expected 'ddp' or 'fsdp'"),
        (["model.score_scaling=sigma"], r"config key 'model.score_scaling' is 'sigma', expected one of \('none', "
                                        r"'noise_level'\) for process 'mdm'"),
        (["process=udm", "model.output=score", "model.score_scaling=noise_level"],
         r"config key 'model.score_scaling' is 'noise_level', expected one of \('none',\) for process 'udm'"),
        (["model.score_scaling=noise_level"], "config key 'model.score_scaling' is 'noise_level', expected 'none' "
                                              "unless model.output is 'score'"),
        (["process=audm", "objective=score_entropy"], "config key 'objective' is 'score_entropy'"),
    ],
)
def test_bad_configs(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, overrides)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist .* packaged configs"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("process: [unclosed\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["optim.lr=inf"], "config key 'optim.lr' is inf, expected a finite number"),
        (["optim.lr=nan"], "config key 'optim.lr' is nan, expected a finite number"),
        (["optim.lr=.inf"], "config key 'optim.lr' is inf, expected a finite number"),  # YAML's own spelling
        (["optim.min_lr_ratio=-2"], "config key 'optim.min_lr_ratio' is -2.0, expected a number in \\[0, 1\\]"),
        (["optim.min_lr_ratio=1.5"], "config key 'optim.min_lr_ratio' is 1.5, expected a number in \\[0, 1\\]"),
        (["optim.min_lr_ratio=nan"], "config key 'optim.min_lr_ratio' is nan, expected a finite number"),
        (["optim.weight_decay=-0.1"], "config key 'optim.weight_decay' is -0.1, expected a number >= 0"),
        (["optim.beta1=1"], "config key 'optim.beta1' is 1.0, expected a number in \\[0, 1\\)"),
        (["optim.beta2=-0.5"], "config key 'optim.beta2' is -0.5, expected a number in \\[0, 1\\)"),
        (["optim.grad_clip=inf"], "config key 'optim.grad_clip' is inf, expected a finite number"),
        (["model.dropout=1"], "config key 'model.dropout' is 1.0, expected a number in \\[0, 1\\)"),
        (["max_minutes=inf"], "config key 'max_minutes' is inf, expected a finite number"),
        (["ema=nan"], "config key 'ema' is nan, expected a finite number"),
        (["eps=-inf"], "config key 'eps' is -inf, expected a finite number"),
    ],
)
def test_float_keys_must_be_finite_and_in_range(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, overrides)


def test_float_bounds_are_inclusive_where_documented():
    cfg = load_config(None, ["optim.min_lr_ratio=0", "optim.weight_decay=0", "optim.beta1=0"])
    assert cfg.optim.min_lr_ratio == 0.0 and cfg.optim.beta1 == 0.0
    assert load_config(None, ["optim.min_lr_ratio=1"]).optim.min_lr_ratio == 1.0


def test_yaml_errors_name_the_position_not_the_text(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("process: mdm\nsecret: [unclosed SECRET-TEXT\n")
    with pytest.raises(ValueError, match="not valid YAML \\(syntax error at line 3, column 1\\)") as info:
        load_config(bad)
    assert "SECRET" not in str(info.value)


def test_saved_configs_keep_the_convention_they_were_made_with():
    from ddlm.config import TrainConfig, saved_config

    new = TrainConfig(process="ar").to_dict()
    assert new["model"]["block_start"] is True and saved_config(new).model.block_start is True
    old = {**new, "model": {k: v for k, v in new["model"].items() if k != "block_start"}}
    assert saved_config(old).model.block_start is False  # an AR run saved before block-start tokens
    mdm = {**old, "process": "mdm"}
    assert saved_config(mdm).model.block_start is True  # unused by diffusion runs



def test_is_autoregressive_is_one_rule_for_names_configs_models_and_runs():
    from ddlm import MaskedDiffusion
    from ddlm.config import is_autoregressive
    from ddlm.models.ar import ARConfig, ARTransformer
    from ddlm.models.diffusion import DiffusionModel

    ar, mdm = load_config(None, ["process=ar"]), load_config(None, ["process=mdm"])
    assert is_autoregressive("ar") and not is_autoregressive("udm")
    assert is_autoregressive(ar) and not is_autoregressive(mdm)
    assert is_autoregressive(ar.to_dict()) and not is_autoregressive(mdm.to_dict())
    assert is_autoregressive(ARTransformer(ARConfig.preset("tiny", 10, 8, hidden=16, blocks=1, heads=2)))
    assert not is_autoregressive(DiffusionModel.build("mdm", 10, 8, hidden=16, blocks=1, heads=2))

    class Loaded:  # a loaded run: its process, None for the autoregressive baseline
        def __init__(self, process):
            self.process = process

    assert is_autoregressive(Loaded(None)) and not is_autoregressive(Loaded(MaskedDiffusion(10)))
    with pytest.raises(TypeError, match="got MaskedDiffusion"):
        is_autoregressive(MaskedDiffusion(10))
    with pytest.raises(TypeError, match="got NoneType"):
        is_autoregressive(None)
