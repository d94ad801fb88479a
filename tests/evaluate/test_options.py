"""Sampler settings, their command-line options and ``draw`` (ddlm.evaluate.options)."""

import argparse

import pytest
import torch

import ddlm
from ddlm.data.tokenizers import CharTokenizer
from ddlm.evaluate.options import (
    SamplerSettings,
    add_sampler_options,
    batch_seed,
    draw,
    settings_from_args,
    time_conditioned,
)
from ddlm.models.ar import ARConfig, ARTransformer
from ddlm.models.diffusion import DiffusionModel

TOK = CharTokenizer("abcdefgh")  # K = 10 with BOS/EOS
L = 12


def _model(process, **kw):
    torch.manual_seed(0)
    return DiffusionModel.build(process, TOK.vocab_size, L, hidden=32, blocks=1, heads=2, **kw).eval()


def _ar():
    torch.manual_seed(0)
    return ARTransformer(ARConfig.preset("tiny", TOK.vocab_size, L, hidden=32, blocks=1, heads=2)).eval()


def _parse(*argv):
    p = argparse.ArgumentParser()
    add_sampler_options(p)
    return settings_from_args(p.parse_args(list(argv)))


# ---- settings ------------------------------------------------------------------------------------

def test_settings_round_trip_and_fill_in_every_field():
    s = SamplerSettings(sampler="ancestral", nfe=16, temperature=0.8, temperature_on="loo", top_p=0.9,
                        corrector={"sweeps": 1}, seed=3)
    d = s.to_dict()
    assert d["corrector"] == {"sweeps": 1, "k": 12, "selection": "lowest_log_margin", "tau": 1.0}
    assert SamplerSettings.from_dict(d) == s
    r = SamplerSettings(remasking={"kind": "rescale"}).to_dict()["remasking"]
    assert r["eta"] == 0.015 and r["t_switch"] is None  # the published default is written down
    assert set(SamplerSettings().to_dict()) == {"sampler", "nfe", "temperature", "temperature_on", "top_p",
                                                "corrector", "remasking", "seed"}
    assert SamplerSettings.from_dict({}) == SamplerSettings()


@pytest.mark.parametrize("d,match", [
    ({"nfe": 0}, "nfe must be an integer >= 1, got 0"),
    ({"nfe": 2.5}, "nfe"),
    ({"temperature": 0}, "temperature must be a positive"),
    ({"temperature": float("inf")}, "temperature"),
    ({"top_p": 0.0}, r"top_p must lie in \(0, 1\]"),
    ({"top_p": 1.5}, "top_p"),
    ({"temperature_on": "score"}, "temperature_on must be one of"),
    ({"corrector": {"sweeps": 1, "foo": 2}}, "corrector has unknown key 'foo'"),
    ({"corrector": {"selection": "best"}}, "corrector: selection must be one of"),
    ({"corrector": [1]}, "corrector must be a dict"),
    ({"remasking": {"kind": "sometimes"}}, "remasking: kind must be one of"),
    ({"remasking": {"eta": 2.0}}, "remasking: eta must lie in"),
    ({"seed": "0"}, "seed must be an integer"),
    ({"temprature": 1.0}, "unknown key 'temprature'"),
])
def test_invalid_settings_name_the_key(d, match):
    with pytest.raises(ValueError, match=match):
        SamplerSettings.from_dict(d)


def test_command_line_options():
    s = _parse("--sampler", "x0", "--nfe", "32", "--temperature", "0.7", "--temperature-on", "denoiser",
               "--top-p", "0.95", "--corrector-sweeps", "2", "--corrector-k", "3", "--corrector-selection", "random",
               "--seed", "5")
    assert s == SamplerSettings(sampler="x0", nfe=32, temperature=0.7, temperature_on="denoiser", top_p=0.95,
                                corrector={"sweeps": 2, "k": 3, "selection": "random", "tau": 1.0}, seed=5)
    assert _parse() == SamplerSettings()
    r = _parse("--remasking", "loop", "--remasking-eta", "0.05", "--remasking-t-on", "0.6")
    assert r.remasking == {"kind": "loop", "eta": 0.05, "t_on": 0.6, "t_off": 0.05, "alpha_on": 0.9, "t_switch": None}
    with pytest.raises(ValueError, match="option --corrector-k needs --corrector-sweeps"):
        _parse("--corrector-k", "3")
    with pytest.raises(ValueError, match="option --remasking-eta needs --remasking KIND"):
        _parse("--remasking-eta", "0.1")
    with pytest.raises(ValueError, match="top_p"):
        _parse("--top-p", "0")


# ---- draw ----------------------------------------------------------------------------------------

def test_draw_is_ddlm_sample_with_the_settings():
    """One batch of draw() is exactly ddlm.sample with the settings and the batch's generator."""
    cases = [
        ("udm", SamplerSettings(nfe=9, temperature=0.8, top_p=0.9, corrector={"sweeps": 1, "k": 2}, seed=4),
         dict(sampler="ancestral", temperature=0.8, top_p=0.9, corrector=ddlm.GibbsCorrector(sweeps=1, k=2))),
        ("mdm", SamplerSettings(nfe=8, remasking={"kind": "cap", "eta": 0.05}, seed=1),
         dict(sampler="remdm", remasking=ddlm.RemaskingSchedule("cap", 0.05))),
        ("audm", SamplerSettings(sampler="reaudm", nfe=6, seed=2), dict(sampler="reaudm")),
    ]
    for process, settings, kw in cases:
        model = _model(process)
        got = draw(model, model.process, TOK, settings, 5, L, batch_size=8)
        g = torch.Generator().manual_seed(batch_seed(settings.seed, 0))
        want = ddlm.sample(model, model.process, 5, L, settings.nfe, prediction=model.prediction, generator=g, **kw)
        assert torch.equal(got, want), process


def test_draw_is_reproducible_and_batches_are_prefixes():
    model = _model("udm")
    s = SamplerSettings(nfe=6, seed=7)
    a = draw(model, model.process, TOK, s, 10, L, batch_size=4)
    assert a.shape == (10, L) and a.dtype == torch.long
    assert torch.equal(a, draw(model, model.process, TOK, s, 10, L, batch_size=4))
    assert not torch.equal(a, draw(model, model.process, TOK, SamplerSettings(nfe=6, seed=8), 10, L, batch_size=4))
    # whole batches of a larger draw are the samples of a smaller one with the same batch size
    assert torch.equal(a[:8], draw(model, model.process, TOK, s, 8, L, batch_size=4))
    assert not torch.equal(a[4:8], a[:4])  # batches have their own generators


@pytest.mark.parametrize("process", ["mdm", "udm", "audm"])
def test_prompts_are_held_fixed(process):
    model = _model(process)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 8, (6, L), generator=g)
    mask = torch.rand(6, L, generator=g) < 0.4
    x = draw(model, model.process, TOK, SamplerSettings(nfe=5), 6, L, prompt=prompt, prompt_mask=mask, batch_size=4)
    assert torch.equal(x[mask], prompt[mask])
    assert int(x.max()) < TOK.vocab_size
    # a (length,) prompt is shared by every sample
    x = draw(model, model.process, TOK, SamplerSettings(nfe=5), 3, L, prompt=prompt[0], prompt_mask=mask[0])
    assert torch.equal(x[:, mask[0]], prompt[0][mask[0]].expand(3, -1))


@pytest.mark.parametrize("process,settings,match", [
    ("udm", SamplerSettings(remasking={"kind": "cap"}),
     r"option remasking applies to no UDM sampler \(it is used by MDM sampler 'remdm'\)"),
    ("audm", SamplerSettings(remasking={"kind": "cap"}), "option remasking applies to no AUDM sampler"),
    ("mdm", SamplerSettings(corrector={"sweeps": 1}),
     "option corrector GibbsCorrector supports uniform diffusion only, got process MDM"),
    ("mdm", SamplerSettings(temperature_on="loo"),
     r"option temperature_on must be one of \('denoiser',\) for MDM, got 'loo'"),
    ("mdm", SamplerSettings(sampler="x0"), r"option sampler must be one of \[.*'remdm'.*\] for MDM, got 'x0'"),
    ("mdm", SamplerSettings(sampler="ancestral", remasking={"kind": "cap"}), "used by sampler 'remdm' only"),
    ("udm", SamplerSettings(sampler="confidence", temperature=0.5), "greedy"),
])
def test_options_that_do_not_apply_are_refused(process, settings, match):
    model = _model(process)
    with pytest.raises(ValueError, match=match):
        draw(model, model.process, TOK, settings, 2, L)


def test_bad_prompt_and_sizes():
    model = _model("mdm")
    with pytest.raises(ValueError, match="prompt has shape"):
        draw(model, model.process, TOK, SamplerSettings(nfe=2), 2, L, prompt=torch.zeros(3, L, dtype=torch.long),
             prompt_mask=torch.ones(3, L, dtype=torch.bool))
    with pytest.raises(ValueError, match="given together"):
        draw(model, model.process, TOK, SamplerSettings(nfe=2), 2, L, prompt=torch.zeros(L, dtype=torch.long))
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        draw(model, model.process, TOK, SamplerSettings(nfe=2), 0, L)


def test_time_conditioning_flag_reaches_the_sampler():
    assert time_conditioned(_model("mdm")) is True
    assert time_conditioned(_model("mdm", time_conditioning=False)) is False
    # a model that ignores t: the sampler skips passes whose input did not change, same samples
    model = _model("mdm", time_conditioning=False)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    s = SamplerSettings(nfe=64, seed=0)
    x = draw(model, model.process, TOK, s, 2, L)
    assert len(calls) < 64  # with L = 12 positions at most 12 steps change the input
    g = torch.Generator().manual_seed(batch_seed(0, 0))
    ref = ddlm.sample(model, model.process, 2, L, 64, prediction="denoiser", generator=g, time_conditioned=True)
    assert torch.equal(x, ref)


# ---- autoregressive ------------------------------------------------------------------------------

def test_autoregressive_draw():
    model = _ar()
    s = SamplerSettings(temperature=0.9, seed=1)
    x = draw(model, None, TOK, s, 5, L, batch_size=2)
    assert x.shape == (5, L) and bool((x[:, 0] == TOK.bos_id).all())
    assert torch.equal(x, draw(model, None, TOK, s, 5, L, batch_size=2))
    g = torch.Generator().manual_seed(batch_seed(1, 0))
    ref = model.generate(torch.full((2, 1), TOK.bos_id), L, temperature=0.9, generator=g)
    assert torch.equal(x[:2], ref)
    # prefix prompt held
    prompt = torch.tensor([TOK.bos_id] + TOK.encode("abc") + [0] * (L - 4))
    mask = torch.arange(L) < 4
    y = draw(model, None, TOK, s, 3, L, prompt=prompt, prompt_mask=mask)
    assert torch.equal(y[:, :4], prompt[:4].expand(3, -1))


def test_autoregressive_top_p_keeps_the_nucleus():
    """top_p -> 0 keeps only the most likely next token: greedy decoding, computed independently."""
    model = _ar()
    x = draw(model, None, TOK, SamplerSettings(top_p=1e-9), 2, L)
    greedy = torch.full((1, 1), TOK.bos_id)
    with torch.no_grad():
        while greedy.shape[1] < L:
            greedy = torch.cat([greedy, model(greedy)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(x, greedy.expand(2, -1))
    assert not torch.equal(draw(model, None, TOK, SamplerSettings(top_p=0.999, seed=3), 8, L),
                           greedy.expand(8, -1))


@pytest.mark.parametrize("settings,match", [
    (SamplerSettings(sampler="x0"), "option sampler='x0' does not apply to an autoregressive run"),
    (SamplerSettings(corrector={"sweeps": 1}), "option corrector="),
    (SamplerSettings(remasking={"kind": "cap"}), "option remasking="),
    (SamplerSettings(temperature_on="loo"), "option temperature_on="),
])
def test_autoregressive_refuses_diffusion_options(settings, match):
    with pytest.raises(ValueError, match=match):
        draw(_ar(), None, TOK, settings, 2, L)


def test_autoregressive_refuses_infilling():
    prompt = torch.zeros(L, dtype=torch.long)
    mask = torch.zeros(L, dtype=torch.bool)
    mask[3] = True
    with pytest.raises(ValueError, match="prefix prompts only"):
        draw(_ar(), None, TOK, SamplerSettings(), 2, L, prompt=prompt, prompt_mask=mask)
