import pytest
import torch

import ddlm
from ddlm import conversions as C
from ddlm import exact
from ddlm.sampling.correctors import SELECTIONS

N = 100_000


def _pt_samples(law, alpha, n, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = law.sample(n, generator=g)
    proc = ddlm.UniformDiffusion(law.vocab_size, ddlm.LinearSchedule(eps=0.0))
    return proc.corrupt(x0, 1.0 - alpha, generator=g).xt, g


def _tv_to_pt(law, x, alpha):
    pt = exact.log_marginal(law, law.sequences, alpha).exp()
    return exact.tv_distance(exact.ToyLaw(pt / pt.sum(), law.vocab_size, law.length), x)


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.3, 0.7])
def test_random_k1_gibbs_leaves_pt_invariant(alpha):
    law = exact.random_law(3, 3, seed=3)
    x, g = _pt_samples(law, alpha, N, 0)
    start = _tv_to_pt(law, x, alpha)
    corr = ddlm.GibbsCorrector(sweeps=1, k=1, selection="random")
    allowed = torch.ones_like(x, dtype=torch.bool)
    y = x
    for _ in range(6):
        y = corr.step(y, exact.loo(law, y, alpha), alpha, allowed, g)
    assert bool((y != x).any())
    assert _tv_to_pt(law, y, alpha) < start + 0.006
    # the check has teeth: resampling from r itself (no (1 - alpha)/K noise floor) leaves p_t
    z = x
    for _ in range(6):
        z = corr.step(z, exact.loo(law, z, alpha), 1.0, allowed, g)
    assert _tv_to_pt(law, z, alpha) > start + 0.05


def test_denoiser_driven_gibbs_is_also_invariant():
    """Averaging d(y | x) over the current token x^i ~ p_t(. | x^{-i}) gives r(y), so the kernel
    alpha d + (1 - alpha)/K also leaves p_t invariant (exact transition matrix, not sampling)."""
    law = exact.random_law(3, 2, seed=3)
    seq, n, alpha = law.sequences, law.num_states, 0.4
    pt = exact.log_marginal(law, seq, alpha).exp()
    for f in (exact.loo, exact.denoiser):
        pred = f(law, seq, alpha).exp()
        trans = torch.zeros(n, n, dtype=torch.float64)
        for a in range(n):
            for i in range(2):
                for y in range(3):
                    b = seq[a].clone()
                    b[i] = y
                    trans[a, law.index(b)] += (alpha * pred[a, i, y] + (1 - alpha) / 3) / 2
        assert torch.allclose(pt @ trans, pt, atol=1e-14)


def test_selection_rules_pick_the_intended_positions():
    # LOO rows for 4 positions, current tokens x; tau tiny makes the choice deterministic
    r = torch.tensor([[[0.90, 0.05, 0.05], [0.34, 0.33, 0.33], [0.10, 0.80, 0.10], [0.50, 0.45, 0.05]]]).log()
    x = torch.tensor([[0, 0, 2, 1]])
    allowed = torch.ones(1, 4, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)

    def pick(sel):
        c = ddlm.GibbsCorrector(k=1, selection=sel, tau=1e-6)
        return int(c.select(c.scores(x, r, 0.8), allowed, g).nonzero()[0, 1])

    assert pick("lowest_maxprob") == 1  # flattest conditional
    # current token 2 has r = 0.10 (and 0.05 at position 3 is token 2, not current)
    assert pick("lowest_current_prob") == 2
    # log-margin: pos0 +, pos1 ~0, pos2 very negative, pos3 (token 1: 0.45 vs best other 0.50) slightly negative
    assert pick("lowest_log_margin") == 2
    # prompt positions are never selected
    c = ddlm.GibbsCorrector(k=4, selection="random")
    chosen = c.select(c.scores(x, r, 0.8), torch.tensor([[True, False, True, False]]), g)
    assert chosen.tolist() == [[True, False, True, False]]


def test_random_selection_is_uniform():
    c = ddlm.GibbsCorrector(k=2, selection="random")
    scores = torch.zeros(50_000, 5, dtype=torch.float64)
    chosen = c.select(scores, torch.ones(50_000, 5, dtype=torch.bool), torch.Generator().manual_seed(0))
    assert bool((chosen.sum(-1) == 2).all())
    assert torch.allclose(chosen.double().mean(0), torch.full((5,), 0.4, dtype=torch.float64), atol=0.01)


def test_corrector_honours_temperature_and_generator():
    law = exact.random_law(3, 3, seed=3)
    proc = ddlm.UniformDiffusion(3)
    model = exact.model(law, proc, "loo")
    corr = ddlm.GibbsCorrector(sweeps=2, k=2, selection="lowest_log_margin")

    def run(seed, temperature):
        return ddlm.sample(model, proc, 2000, 3, 10, prediction="loo", corrector=corr, temperature=temperature,
                           generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0, 1.0), run(0, 1.0))
    assert not torch.equal(run(0, 1.0), run(1, 1.0))
    # the temperature changes the draws (predictor and corrector alike)
    assert not torch.equal(run(0, 1.0), run(0, 0.5))


def test_bad_arguments():
    with pytest.raises(ValueError, match="selection must be one of"):
        ddlm.GibbsCorrector(selection="highest")
    with pytest.raises(ValueError, match="sweeps must be an integer >= 1, got 0"):
        ddlm.GibbsCorrector(sweeps=0)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        ddlm.GibbsCorrector(k=0)
    with pytest.raises(ValueError, match="tau must be a positive"):
        ddlm.GibbsCorrector(tau=0.0)
    assert set(SELECTIONS) == {"random", "lowest_maxprob", "lowest_current_prob", "lowest_log_margin"}


def test_corrector_receives_the_tempered_loo(monkeypatch):
    """The loop hands the corrector the LOO tempered as asked (on the LOO or on the denoiser)."""
    law = exact.random_law(3, 3, seed=3)
    proc = ddlm.UniformDiffusion(3)
    seen = []
    original = ddlm.GibbsCorrector.step

    def spy(self, x, logr, alpha_s, allowed, generator):
        seen.append((x.clone(), logr.log_probs(), alpha_s))
        return original(self, x, logr, alpha_s, allowed, generator)

    monkeypatch.setattr(ddlm.GibbsCorrector, "step", spy)
    corr = ddlm.GibbsCorrector(sweeps=1, k=1)
    for on in ("loo", "denoiser"):
        seen.clear()
        ddlm.sample(exact.model(law, proc, "loo"), proc, 50, 3, 7, prediction="loo", corrector=corr,
                    temperature=0.5, temperature_on=on, generator=torch.Generator().manual_seed(0))
        assert len(seen) == 3  # split_nfe(7, 1) = (4, 3)
        for x, got, a in seen:
            r = exact.loo(law, x, a)
            if on == "loo":
                want = (r / 0.5).log_softmax(-1)
            else:
                want = C.denoiser_to_loo((C.loo_to_denoiser(r, x, a) / 0.5).log_softmax(-1), x, a)
            assert torch.allclose(got, want, atol=1e-9)
