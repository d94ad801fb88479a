"""The LOO sensitivity probe, checked against brute-force enumeration with the exact oracle."""

import math

import pytest
import torch

import ddlm
from ddlm import exact
from ddlm.evaluate import probe as P

LAW3 = exact.random_law(3, 3, seed=7, concentration=0.7)
LAW2 = exact.random_law(2, 3, seed=3, concentration=0.7)
UDM3 = ddlm.UniformDiffusion(3)
UDM2 = ddlm.UniformDiffusion(2)


class Declared:
    """An exact oracle whose ``.output`` declares ``output`` but which returns the oracle's ``returns``."""

    def __init__(self, law, process, returns, output):
        self.f, self.output = exact.model(law, process, returns), output

    def __call__(self, xt, t):
        return self.f(xt, t)


def _states(law, process, nfe=6, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return P.trajectory(Declared(law, process, "loo", "loo"), process, n, law.length, nfe, generator=g)


def _brute_tv(law, x, alpha, i, y, view):
    """TV at position i between exact.<view> at x and at x with position i set to y, enumerated directly."""
    xp = x.clone()
    xp[i] = y
    f = exact.denoiser if view == "denoiser" else exact.loo
    a, b = f(law, x[None], alpha)[0, i].exp(), f(law, xp[None], alpha)[0, i].exp()
    return 0.5 * float((a - b).abs().sum())


# ---- exactness ---------------------------------------------------------------------------------

@pytest.mark.parametrize("returns", ["loo", "denoiser", "score"])
def test_exact_oracle_has_zero_sensitivity(returns):
    """The exact LOO, and the exact denoiser / score declared as such (converted exactly), leak nothing."""
    states = _states(LAW3, UDM3)
    res = P.loo_sensitivity(Declared(LAW3, UDM3, returns, returns), UDM3, states, positions_per_sequence=3,
                            generator=torch.Generator().manual_seed(1))
    assert len(res) == len(states) == 6
    assert sorted({round(r["t"], 9) for r in res}, reverse=True) == [round(1 - j / 6, 9) for j in range(6)]
    for r in res:
        assert r["num"] == 12 * 3 and r["num_sequences"] == 12
        assert r["max_tv"] < 1e-9 and abs(r["mean_tv"]) < 1e-9
        assert r["alpha"] == pytest.approx(float(UDM3.alpha(torch.tensor(r["t"], dtype=torch.float64))))


def test_denoiser_posing_as_loo_matches_brute_force_all_positions():
    """K = 2 with every position perturbed: the picks are determined, so each state's mean, SE and max
    equal the brute-force enumeration with exact.denoiser."""
    states = _states(LAW2, UDM2, nfe=4, n=10)
    res = P.loo_sensitivity(Declared(LAW2, UDM2, "denoiser", "loo"), UDM2, states, positions_per_sequence=3)
    for (x, t), r in zip(states, res, strict=True):
        alpha = float(UDM2.alpha(torch.tensor(t, dtype=torch.float64)))
        table = torch.tensor([[_brute_tv(LAW2, row, alpha, i, 1 - int(row[i]), "denoiser") for i in range(3)]
                              for row in x], dtype=torch.float64)
        assert r["mean_tv"] == pytest.approx(float(table.mean()), abs=1e-9)
        assert r["max_tv"] == pytest.approx(float(table.max()), abs=1e-9)
        assert r["se_tv"] == pytest.approx(float(table.mean(1).std() / math.sqrt(10)), abs=1e-9)
    assert min(r["mean_tv"] for r in res[1:]) > 0.02  # clearly positive once alpha is not ~0
    # the exact LOO of the same law at the same states: 0 (and the brute force agrees it is 0)
    x, t = states[2]
    alpha = float(UDM2.alpha(torch.tensor(t, dtype=torch.float64)))
    assert max(_brute_tv(LAW2, row, alpha, i, 1 - int(row[i]), "loo") for row in x for i in range(3)) < 1e-12


def test_loo_tv_explicit_picks_match_brute_force():
    """K = 4, explicit positions and replacement tokens, several times: loo_tv equals the enumeration."""
    law = exact.random_law(4, 3, seed=11, concentration=0.5)
    proc = ddlm.UniformDiffusion(4)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(4, (5, 3), generator=g)
    positions = torch.tensor([[0, 2], [1, 0], [2, 1], [0, 1], [2, 0]])
    tokens = torch.randint(4, (5, 2), generator=g)
    for t in (0.15, 0.5, 0.9):
        alpha = float(proc.alpha(torch.tensor(t, dtype=torch.float64)))
        tv = P.loo_tv(Declared(law, proc, "denoiser", "loo"), proc, x, t, positions, tokens)
        want = torch.tensor([[_brute_tv(law, x[b], alpha, int(positions[b, j]), int(tokens[b, j]), "denoiser")
                              for j in range(2)] for b in range(5)], dtype=torch.float64)
        assert torch.allclose(tv, want, atol=1e-9, rtol=0)
        assert float(tv.max()) > 0.01
        same = P.loo_tv(Declared(law, proc, "denoiser", "loo"), proc, x, t, positions, x.gather(1, positions))
        assert float(same.abs().max()) == 0.0  # y = x^i changes nothing


def test_draw_perturbations_are_distinct_positions_and_uniform_other_tokens():
    x = torch.randint(5, (4000, 6), generator=torch.Generator().manual_seed(0))
    pos, tok = P.draw_perturbations(x, 5, 3, torch.Generator().manual_seed(1))
    assert pos.shape == tok.shape == (4000, 3)
    assert all(len(set(row.tolist())) == 3 for row in pos)
    assert bool((tok != x.gather(1, pos)).all())
    shift = ((tok - x.gather(1, pos)) % 5).flatten()
    freq = torch.bincount(shift, minlength=5).double() / shift.numel()
    assert freq[0] == 0 and torch.allclose(freq[1:], torch.full((4,), 0.25, dtype=torch.float64), atol=0.02)
    posfreq = torch.bincount(pos.flatten(), minlength=6).double() / pos.numel()
    assert torch.allclose(posfreq, torch.full((6,), 1 / 6, dtype=torch.float64), atol=0.02)
    assert P.draw_perturbations(x[:3], 5, 99)[0].shape == (3, 6)  # P > L: every position once


# ---- trajectory ---------------------------------------------------------------------------------

def test_trajectory_records_every_full_state_in_order():
    model = Declared(LAW3, UDM3, "loo", "loo")
    states = P.trajectory(model, UDM3, 7, 3, 5, generator=torch.Generator().manual_seed(4))
    assert len(states) == 5
    ts = [t for _, t in states]
    assert ts == sorted(ts, reverse=True) and len(set(ts)) == 5 and ts[0] == 1.0
    assert all(x.shape == (7, 3) and x.dtype == torch.long for x, _ in states)
    # the first state is the prior draw of ddlm.sample with the same seed; later ones follow the sampler
    prior = UDM3.prior((7, 3), generator=torch.Generator().manual_seed(4)).xt
    assert torch.equal(states[0][0], prior)
    assert not all(torch.equal(states[0][0], x) for x, _ in states[1:])


def test_trajectory_with_corrector_counts_every_pass():
    model = Declared(LAW3, UDM3, "loo", "loo")
    corr = ddlm.GibbsCorrector(sweeps=1, k=1, selection="random")
    states = P.trajectory(model, UDM3, 4, 3, 9, corrector=corr, generator=torch.Generator().manual_seed(0))
    _, info = ddlm.sample(model, UDM3, 4, 3, 9, prediction="loo", corrector=corr, return_info=True,
                          generator=torch.Generator().manual_seed(0))
    ts = [t for _, t in states]
    assert len(states) == info.nfe == 9 and ts == sorted(ts, reverse=True)
    assert len(set(ts)) == info.predictor_steps  # a corrector pass at s shares s with the next predictor pass


def test_probe_is_seeded_and_records_settings():
    model = Declared(LAW3, UDM3, "denoiser", "loo")
    a = P.probe(model, UDM3, num_samples=6, length=3, nfe=4, positions_per_sequence=2, seed=3)
    b = P.probe(model, UDM3, num_samples=6, length=3, nfe=4, positions_per_sequence=2, seed=3)
    c = P.probe(model, UDM3, num_samples=6, length=3, nfe=4, positions_per_sequence=2, seed=4)
    assert a == b and a != c
    s = a["settings"]
    assert (s["nfe"], s["num_samples"], s["positions_per_sequence"], s["seed"], s["sampler"], s["output"]) == \
        (4, 6, 2, 3, "ancestral", "loo")
    assert len(a["states"]) == 4 and a["mean_tv"] > 0.02
    assert a["mean_tv"] == pytest.approx(sum(r["mean_tv"] for r in a["states"]) / 4)


# ---- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("proc", [ddlm.MaskedDiffusion(3), ddlm.AbsorbingUniformDiffusion(3)], ids=["mdm", "audm"])
def test_non_uniform_processes_are_refused(proc):
    x = torch.zeros(2, 3, dtype=torch.long)
    model = Declared(LAW3, UDM3, "loo", "loo")
    with pytest.raises(ValueError, match=f"process is {proc.name.upper()}.*uniform diffusion \\(UDM\\) only"):
        P.loo_sensitivity(model, proc, [(x, 0.5)])
    with pytest.raises(ValueError, match="UDM\\) only"):
        P.trajectory(model, proc, 2, 3, 4)
    with pytest.raises(ValueError, match="UDM\\) only"):
        P.probe(model, proc, num_samples=2, length=3, nfe=4)


def test_bad_arguments_are_named():
    f = exact.model(LAW3, UDM3, "loo")  # a bare callable: no .output
    x = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="no .output attribute"):
        P.loo_sensitivity(f, UDM3, [(x, 0.5)])
    with pytest.raises(ValueError, match="output must be one of"):
        P.loo_sensitivity(f, UDM3, [(x, 0.5)], output="posterior")
    with pytest.raises(ValueError, match="positions_per_sequence must be an integer >= 1, got 0"):
        P.loo_sensitivity(f, UDM3, [(x, 0.5)], output="loo", positions_per_sequence=0)
    with pytest.raises(ValueError, match="states must be a non-empty list"):
        P.loo_sensitivity(f, UDM3, [], output="loo")
    with pytest.raises(ValueError, match="alpha = 1"):
        P.loo_sensitivity(f, ddlm.UniformDiffusion(3, ddlm.LinearSchedule(eps=0.0)), [(x, 0.0)], output="denoiser")
    with pytest.raises(ValueError, match="expected logits of shape"):
        P.loo_sensitivity(lambda xt, t: torch.zeros(xt.shape[0], 3, 2), UDM3, [(x, 0.5)], output="loo")
