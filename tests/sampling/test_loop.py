"""The shared loop: options, NFE accounting, caching, prompts, seeds, errors."""

import pytest
import torch

import ddlm
from ddlm import conversions as C
from ddlm import exact
from ddlm.sampling.loop import SAMPLERS, _view, split_nfe, top_p_filter

LAW = exact.random_law(3, 4, seed=21)
SCH = ddlm.LinearSchedule()
PROCS = {
    "mdm": (ddlm.MaskedDiffusion(3, SCH), "denoiser"),
    "udm": (ddlm.UniformDiffusion(3, SCH), "loo"),
    "audm": (ddlm.AbsorbingUniformDiffusion(3, SCH), "posterior"),
    "d3pm": (ddlm.D3PM.uniform(3, 20), "loo"),  # absorbing Q: a prompt token at step T has probability 0 (oracle NaN)
}
ALL = [(kind, s) for kind, table in SAMPLERS.items() for s in table]


def _run(kind, sampler="ancestral", n=64, nfe=8, seed=0, **kw):
    proc, pred = PROCS[kind]
    model = kw.pop("model", None) or exact.model(LAW, proc, pred)
    return ddlm.sample(model, proc, n, 4, nfe, prediction=pred, sampler=sampler,
                       generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("kind,sampler", ALL)
def test_every_sampler_runs_seeded_and_returns_data_tokens(kind, sampler):
    x, info = _run(kind, sampler, return_info=True)
    assert x.dtype == torch.long and x.shape == (64, 4)
    assert int(x.min()) >= 0 and int(x.max()) < 3
    assert info.nfe == 8 and info.predictor_steps == 8
    assert torch.equal(x, _run(kind, sampler))
    if sampler != "confidence":  # greedy samplers are deterministic given the prior draw
        assert not torch.equal(x, _run(kind, sampler, seed=1))


class Recorder:
    """Wraps a model and records every input it sees."""

    def __init__(self, model):
        self.model, self.inputs = model, []

    def __call__(self, xt, t, noise=None):
        self.inputs.append(xt.clone())
        return self.model(xt, t, noise) if noise is not None else self.model(xt, t)


@pytest.mark.parametrize("kind,sampler", ALL)
def test_prompted_positions_never_change(kind, sampler):
    proc, pred = PROCS[kind]
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(3, (64, 4), generator=g)
    mask = torch.rand(64, 4, generator=g) < 0.5
    rec = Recorder(exact.model(LAW, proc, pred))
    kw = {"corrector": ddlm.GibbsCorrector(sweeps=1, k=2)} if kind == "udm" and sampler != "confidence" else {}
    x = _run(kind, sampler, model=rec, prompt=prompt, prompt_mask=mask, nfe=9, **kw)
    assert torch.equal(x[mask], prompt[mask])
    for seen in rec.inputs:
        assert torch.equal(seen[mask], prompt[mask])


def test_nfe_accounting_with_corrector():
    assert split_nfe(16, 2) == (6, 5)
    assert split_nfe(10, 0) == (10, 0)
    assert split_nfe(1, 3) == (1, 0)
    for nfe in (1, 2, 7, 16, 33):
        steps, corrected = split_nfe(nfe, 2)
        assert steps + 2 * corrected == nfe and corrected <= steps - 1
        _, info = _run("udm", nfe=nfe, corrector=ddlm.GibbsCorrector(sweeps=2, k=1), return_info=True)
        assert info.nfe == nfe and info.predictor_steps == steps and info.corrected_steps == corrected


def test_time_unconditioned_mdm_caches_unchanged_inputs():
    # the exact MDM denoiser does not depend on t, so caching must not change any sample
    rec = Recorder(exact.model(LAW, PROCS["mdm"][0]))
    x_cached, info = _run("mdm", n=64, nfe=64, model=rec, time_conditioned=False, return_info=True)
    assert torch.equal(x_cached, _run("mdm", n=64, nfe=64))
    assert info.nfe == len(rec.inputs)
    # only rows whose input changed are sent to the model: 64 rows x 4 positions change at most
    # 4 times each, so at most 64 * 4 + 64 rows are evaluated instead of 64 * 64
    assert sum(r.shape[0] for r in rec.inputs) <= 64 * 5
    # with few rows, whole steps change nothing and make no forward pass
    _, info = _run("mdm", n=2, nfe=64, time_conditioned=False, return_info=True)
    assert info.nfe <= 2 * 4 + 1 < 64


def test_extra_output_columns_are_ignored():
    proc, pred = PROCS["udm"]
    base = exact.model(LAW, proc, pred)
    def padded(xt, t):
        return torch.cat([base(xt, t), torch.full((*xt.shape, 5), 50.0, dtype=torch.float64)], -1)
    assert torch.equal(_run("udm", model=padded), _run("udm"))


def test_temperature_on_loo_and_on_denoiser():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, (5, 4), generator=g)
    logr = exact.loo(LAW, x, 0.4)
    logd = exact.denoiser(LAW, x, 0.4)
    T = 0.5
    # temperature on the LOO, consumed as LOO
    got = _view(logd, x, 0.4, "denoiser", "loo", T, "loo", 1.0).log_probs()
    assert torch.allclose(got, (logr / T).log_softmax(-1), atol=1e-12)
    # temperature on the denoiser, consumed as LOO: temper d, then convert
    want = C.denoiser_to_loo((logd / T).log_softmax(-1), x, 0.4)
    got = _view(logr, x, 0.4, "loo", "loo", T, "denoiser", 1.0).log_probs()
    assert torch.allclose(got, want, atol=1e-12)
    assert not torch.allclose(got, (logr / T).log_softmax(-1), atol=1e-3)
    # and the option reaches the samples
    a = _run("udm", n=3000, temperature=0.3)
    b = _run("udm", n=3000, temperature=0.3, temperature_on="denoiser")
    assert not torch.equal(a, b)


def test_low_temperature_lowers_entropy():
    def entropy(x):
        p = torch.bincount(LAW.index(x), minlength=LAW.num_states).double() / x.shape[0]
        p = p[p > 0]
        return float(-(p * p.log()).sum())

    for kind in ("mdm", "udm", "audm"):
        assert entropy(_run(kind, n=4000, nfe=16, temperature=0.4)) < entropy(_run(kind, n=4000, nfe=16)) - 0.15


def test_top_p_filter():
    logp = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.allclose(top_p_filter(logp, 0.7).exp(), torch.tensor([[0.625, 0.375, 0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(top_p_filter(logp, 0.8).exp(), torch.tensor([[0.625, 0.375, 0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(top_p_filter(logp, 0.81).exp(), torch.tensor([[0.5, 0.3, 0.15, 0.0]]) / 0.95, atol=1e-6)
    assert torch.allclose(top_p_filter(logp, 0.1).exp(), torch.tensor([[1.0, 0, 0, 0]]), atol=1e-6)
    assert torch.equal(top_p_filter(logp, 1.0), logp)
    # small top-p removes rare sequences from the samples
    x = _run("mdm", n=3000, top_p=0.3)
    y = _run("mdm", n=3000)
    assert len(torch.unique(LAW.index(x))) < len(torch.unique(LAW.index(y)))


def test_progress_bar(capsys):
    _run("udm", progress=True)
    assert "sampling" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"nfe": 0}, "nfe must be an integer >= 1, got 0"),
        ({"num_samples": 0}, "num_samples must be an integer >= 1"),
        ({"temperature": 0.0}, "temperature must be a positive finite number, got 0.0"),
        ({"temperature": -1.0}, "temperature must be a positive"),
        ({"top_p": 0.0}, r"top_p must lie in \(0, 1\], got 0.0"),
        ({"top_p": 1.5}, r"top_p must lie in \(0, 1\], got 1.5"),
        ({"sampler": "remdm"}, "sampler must be one of .* for UDM, got 'remdm'"),
        ({"prediction": "posterior"}, "prediction must be one of"),
        ({"temperature_on": "score"}, "temperature_on must be one of"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"num_samples": 4, "nfe": 4}
    args.update(kwargs)
    proc, pred = PROCS["udm"]
    with pytest.raises(ValueError, match=match):
        ddlm.sample(exact.model(LAW, proc, pred), proc, args.pop("num_samples"), 4, args.pop("nfe"),
                    **{"prediction": pred, **args})


def test_bad_model_prompt_and_corrector():
    proc, pred = PROCS["mdm"]
    with pytest.raises(ValueError, match="corrector GibbsCorrector supports uniform diffusion only, got process MDM"):
        ddlm.sample(exact.model(LAW, proc), proc, 4, 4, 4, corrector=ddlm.GibbsCorrector())
    def bad(xt, t):
        return torch.zeros(xt.shape[0], xt.shape[1], 2)
    msg = r"model output has shape \(4, 4, 2\), expected logits of shape \(4, 4, V\) with V >= K = 3"
    with pytest.raises(ValueError, match=msg):
        ddlm.sample(bad, proc, 4, 4, 4)
    def wrong_len(xt, t):
        return torch.zeros(xt.shape[0], 5, 3)
    with pytest.raises(ValueError, match="model output has shape"):
        ddlm.sample(wrong_len, proc, 4, 4, 4)
    model = exact.model(LAW, proc)
    with pytest.raises(ValueError, match=r"prompt has shape \(4, 3\), expected \(num_samples, length\) = \(4, 4\)"):
        ddlm.sample(model, proc, 4, 4, 4, prompt=torch.zeros(4, 3, dtype=torch.long),
                    prompt_mask=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"prompt holds token id 3, expected ids in \[0, 2\]"):
        ddlm.sample(model, proc, 4, 4, 4, prompt=torch.full((4, 4), 3), prompt_mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="prompt and prompt_mask must be given together"):
        ddlm.sample(model, proc, 4, 4, 4, prompt=torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="confidence' is greedy"):
        ddlm.sample(model, proc, 4, 4, 4, sampler="confidence", temperature=0.5)
    with pytest.raises(TypeError, match=r"process must be a ddlm process \(e.g. ddlm.UniformDiffusion\), got object"):
        ddlm.sample(model, object(), 4, 4, 4)
