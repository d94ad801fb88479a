"""Samplers with the exact oracle as the model converge to p_0 (docs/maths.md §5, §7)."""

import pytest
import torch

import ddlm
from ddlm import exact
from ddlm.processes import AbsorbingUniformDiffusion, MaskedDiffusion, UniformDiffusion

N = 30_000
SCHEDULE = ddlm.LinearSchedule(eps=0.0)

CASES = [  # (process class, model prediction, sampler)
    (MaskedDiffusion, "denoiser", "ancestral"),
    (MaskedDiffusion, "denoiser", "remdm"),
    (UniformDiffusion, "loo", "ancestral"),
    (UniformDiffusion, "denoiser", "ancestral"),
    (UniformDiffusion, "denoiser", "x0"),
    (UniformDiffusion, "loo", "max_coupling"),
    (AbsorbingUniformDiffusion, "posterior", "ancestral"),
    (AbsorbingUniformDiffusion, "posterior", "reaudm"),
]


def _tv(law, proc, prediction, sampler, nfe, seed=0, n=N, **kw):
    model = exact.model(law, proc, prediction)
    x = ddlm.sample(model, proc, n, law.length, nfe, prediction=prediction, sampler=sampler,
                    generator=torch.Generator().manual_seed(seed), **kw)
    return exact.tv_distance(law, x)


def _floor(law, n=N):
    """TV of n iid draws from p_0 itself: the Monte-Carlo noise level."""
    return exact.tv_distance(law, law.sample(n, generator=torch.Generator().manual_seed(99)))


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(3, 3), (4, 3)], ids=["K3L3", "K4L3"])
@pytest.mark.parametrize("cls,prediction,sampler", CASES, ids=[f"{c.__name__}-{p}-{s}" for c, p, s in CASES])
def test_tv_falls_to_zero_as_nfe_grows(shape, cls, prediction, sampler):
    law = exact.random_law(*shape, seed=7)
    proc = cls(shape[0], SCHEDULE)
    tvs = [_tv(law, proc, prediction, sampler, nfe) for nfe in (1, 4, 64)]
    floor = _floor(law)
    assert tvs[0] > 0.1  # one step from the prior draws every position independently
    assert tvs[1] > tvs[2] + 0.02
    assert tvs[2] < floor + 0.012, (tvs, floor)


def test_denoiser_fed_bridge_never_converges():
    law = exact.random_law(3, 3, seed=7)
    proc = UniformDiffusion(3, SCHEDULE)
    floor = _floor(law)
    for nfe in (4, 16, 64):
        assert _tv(law, proc, "denoiser", "bridge_raw_denoiser", nfe) > floor + 0.1
    # the same kernel fed the converted LOO does converge
    assert _tv(law, proc, "denoiser", "ancestral", 64) < floor + 0.012


def test_corrector_sweeps_lower_tv_at_equal_predictor_steps():
    law = exact.random_law(3, 3, seed=7)
    proc = UniformDiffusion(3, SCHEDULE)
    steps, sweeps = 8, 2
    plain = _tv(law, proc, "loo", "ancestral", steps, n=60_000)
    corr = ddlm.GibbsCorrector(sweeps=sweeps, k=1, selection="random")
    nfe = steps + sweeps * (steps - 1)
    assert ddlm.sampling.split_nfe(nfe, sweeps) == (steps, steps - 1)
    corrected = _tv(law, proc, "loo", "ancestral", nfe, n=60_000, corrector=corr)
    assert corrected < plain - 0.015, (plain, corrected)


def test_prompted_sampling_matches_the_conditional_law_for_mdm_and_audm():
    """Infilling with the exact model: samples follow p_0(x | x^0 = prompt) (MDM, AUDM)."""
    law = exact.random_law(3, 3, seed=8)
    seq = law.sequences
    cond = law.p0 * (seq[:, 0] == 2)
    cond = cond / cond.sum()
    target = exact.ToyLaw(cond, 3, 3)
    prompt = torch.full((N, 3), 2)
    mask = torch.zeros(N, 3, dtype=torch.bool)
    mask[:, 0] = True
    sch = ddlm.LinearSchedule(eps=1e-3)
    for proc, pred in ((MaskedDiffusion(3, sch), "denoiser"), (AbsorbingUniformDiffusion(3, sch), "posterior")):
        x = ddlm.sample(exact.model(law, proc, pred), proc, N, 3, 64, prediction=pred, prompt=prompt,
                        prompt_mask=mask, generator=torch.Generator().manual_seed(1))
        assert bool((x[:, 0] == 2).all())
        assert exact.tv_distance(target, x) < _floor(target) + 0.015
