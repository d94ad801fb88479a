"""ddlm's behaviour on the four defects found in the paper's reference sampling code
(docs/reference-differences.md), each checked on the exact oracle with tolerances that would catch it:

- the ReMDM "loop" schedule leaves no mask in the output, for any nfe (the reference leaves masks
  when no grid point falls in (0, t_off]);
- the Gibbs corrector fed by a denoiser-output network converts to the LOO once and leaves p_t
  invariant (the reference converts twice, which does not);
- confidence sampling on MDM ranks masked positions by the exact denoiser's finite confidence (the
  reference ranks every masked position +inf);
- corrector draws follow the ``generator`` and never touch the global RNG (the reference's do).
"""

import pytest
import torch

import ddlm
from ddlm import conversions as C
from ddlm import exact
from ddlm.processes import State
from ddlm.sampling.loop import SAMPLERS, _view, top_p_filter
from ddlm.sampling.registry import Step

# ---- a. ReMDM "loop": no mask left, whatever the grid ------------------------------------------------

LOOPS = [(0.55, 0.05), (0.9, 0.15), (0.3, 0.02)]  # (t_on, t_off)


@pytest.mark.parametrize("t_on,t_off", LOOPS, ids=[f"on{a}-off{b}" for a, b in LOOPS])
def test_loop_schedule_leaves_no_mask_for_any_nfe(t_on, t_off):
    law = exact.random_law(3, 3, seed=7)
    proc = ddlm.MaskedDiffusion(3, ddlm.LinearSchedule())
    model = exact.model(law, proc, "denoiser")
    for nfe in range(1, 41):
        for eta in (None, 1.0):  # the published eta, and remasking as much as admissible (sigma_max)
            sched = ddlm.RemaskingSchedule("loop", eta=eta, t_on=t_on, t_off=t_off)
            x = ddlm.sample(model, proc, 64, 3, nfe, sampler="remdm", remasking=sched,
                            generator=torch.Generator().manual_seed(nfe))
            assert int(x.max()) < proc.mask_id, (nfe, eta, x)
    # The range holds the reference's failing case: the last step starts at t = 1/nfe in the plateau
    # (t_off, t_on], so no grid point falls in (0, t_off]. A loop that held alpha at alpha_on on that
    # step, as the reference does, would keep a masked token masked w.p. 1 - sigma alpha_on/(1 - alpha_on),
    # 0.82 at the published eta = 0.02, i.e. leave masks in most of the 64 samples. (At sigma = sigma_max
    # that probability is 0: the eta = 1 runs check ddlm's strongest remasking, not the defect.)
    plateau_last = [nfe for nfe in range(1, 41) if t_off < 1.0 / nfe <= t_on]
    assert len(plateau_last) >= 3


def test_loop_schedule_samples_the_law_with_the_exact_model():
    law = exact.random_law(3, 3, seed=7)
    proc = ddlm.MaskedDiffusion(3, ddlm.LinearSchedule())
    n = 30_000
    floor = exact.tv_distance(law, law.sample(n, generator=torch.Generator().manual_seed(99)))
    x = ddlm.sample(exact.model(law, proc, "denoiser"), proc, n, 3, 128, sampler="remdm",
                    remasking=ddlm.RemaskingSchedule("loop"), generator=torch.Generator().manual_seed(0))
    assert exact.tv_distance(law, x) < floor + 0.01


# ---- b. Gibbs corrector fed by a denoiser-output network ------------------------------------------------

def _udm(law):
    return ddlm.UniformDiffusion(law.vocab_size, ddlm.LinearSchedule(eps=0.0))


def _gibbs_matrix(law, logr, alpha):
    """Exact transition matrix of one random-scan k = 1 Gibbs sweep with c_i = alpha r_i + (1 - alpha)/K."""
    seq, n, k, length = law.sequences, law.num_states, law.vocab_size, law.length
    r = logr.exp()
    trans = torch.zeros(n, n, dtype=torch.float64)
    for a in range(n):
        for i in range(length):
            for y in range(k):
                b = seq[a].clone()
                b[i] = y
                trans[a, law.index(b)] += (alpha * r[a, i, y] + (1 - alpha) / k) / length
    return trans


def _corrector_view(law, proc, model, x, alpha):
    """The LOO the sampling loop hands the corrector for a network's output at x (ddlm's own conversion)."""
    t = torch.full((x.shape[0],), 1.0 - alpha, dtype=torch.float64)
    return _view(model(x, t), x, alpha, proc.view(model.prediction), ddlm.GibbsCorrector.consumes, 1.0, "loo", 1.0,
                 proc)


@pytest.mark.parametrize("alpha", [0.4, 0.7])
def test_denoiser_network_through_the_corrector_leaves_pt_invariant_exactly(alpha):
    law = exact.random_law(3, 2, seed=3)
    proc, seq = _udm(law), law.sequences
    pt = exact.log_marginal(law, seq, alpha).exp()
    view = _corrector_view(law, proc, exact.model(law, proc, "denoiser"), seq, alpha).log_probs()
    assert torch.allclose(view, exact.loo(law, seq, alpha), atol=1e-12)  # converted once: the exact LOO
    assert torch.allclose(pt @ _gibbs_matrix(law, view, alpha), pt, atol=1e-14)
    # converting the denoiser to the LOO a second time (what the reference does) breaks invariance
    twice = C.denoiser_to_loo(view, seq, alpha)
    assert 0.5 * float((pt @ _gibbs_matrix(law, twice, alpha) - pt).abs().sum()) > 0.01


def test_denoiser_network_through_the_corrector_step_follows_the_exact_kernel():
    """The corrector's draws (not only its input) on states drawn exactly from p_t: each start state's
    empirical transition law is the invariant Gibbs kernel, far from the doubly converted one."""
    law, alpha, m = exact.random_law(3, 2, seed=3), 0.7, 180_000
    proc, seq = _udm(law), law.sequences
    pt = exact.log_marginal(law, seq, alpha).exp()
    g = torch.Generator().manual_seed(0)
    x = seq[torch.multinomial(pt, m, replacement=True, generator=g)]
    corr = ddlm.GibbsCorrector(sweeps=1, k=1, selection="random")
    step = Step(t=1.0 - alpha, alpha_t=alpha, alpha_s=alpha, free=torch.ones_like(x, dtype=torch.bool), process=proc)
    view = _corrector_view(law, proc, exact.model(law, proc, "denoiser"), x, alpha)
    y = corr.correct(State(x), view, step, g).xt
    a, b = law.index(x), law.index(y)
    joint = torch.zeros(law.num_states, law.num_states, dtype=torch.float64)
    joint.index_put_((a, b), torch.full((m,), 1.0 / m, dtype=torch.float64), accumulate=True)
    exact_view = exact.loo(law, seq, alpha)
    want = pt[:, None] * _gibbs_matrix(law, exact_view, alpha)  # the exact law of (x, y)
    wrong = pt[:, None] * _gibbs_matrix(law, C.denoiser_to_loo(exact_view, seq, alpha), alpha)
    assert (joint - want).abs().max() < 0.005
    assert (wrong - want).abs().max() > 0.02
    tv_y = 0.5 * float((joint.sum(0) - pt).abs().sum())
    assert tv_y < 0.01
    assert 0.5 * float((wrong.sum(0) - pt).abs().sum()) > tv_y + 0.05


def test_the_loop_hands_the_corrector_the_exact_loo_of_a_denoiser_network(monkeypatch):
    """Inside ``ddlm.sample``: every sweep of the corrector receives the exact LOO (the view whose Gibbs
    kernel is invariant above), not a doubly converted one."""
    law = exact.random_law(3, 2, seed=3)
    proc = _udm(law)
    seen = []
    original = ddlm.GibbsCorrector.step

    def spy(self, x, logr, alpha_s, allowed, generator):
        seen.append((x.clone(), logr.log_probs(), alpha_s))
        return original(self, x, logr, alpha_s, allowed, generator)

    monkeypatch.setattr(ddlm.GibbsCorrector, "step", spy)
    ddlm.sample(exact.model(law, proc, "denoiser"), proc, 100, 2, 9, corrector=ddlm.GibbsCorrector(sweeps=2, k=1),
                generator=torch.Generator().manual_seed(0))
    assert len(seen) == 2 * 2  # split_nfe(9, 2) = (5, 2): two corrected steps of two sweeps
    for x, got, a in seen:
        assert torch.allclose(got, exact.loo(law, x, a), atol=1e-9)
        assert not torch.allclose(got, C.denoiser_to_loo(exact.loo(law, x, a), x, a), atol=1e-2)


def test_denoiser_and_loo_networks_give_the_same_corrected_samples():
    """End to end: the exact denoiser network and the exact LOO network are the same model to the
    sampler, corrector included; with one seed they give the same samples (a second conversion of
    the denoiser would change most of them)."""
    law = exact.random_law(3, 3, seed=3)
    proc = ddlm.UniformDiffusion(3)
    corr = ddlm.GibbsCorrector(sweeps=2, k=1, selection="random")

    def run(prediction, **kw):
        return ddlm.sample(exact.model(law, proc, prediction), proc, 3000, 3, 13, corrector=corr,
                           generator=torch.Generator().manual_seed(0), **kw)

    assert torch.equal(run("denoiser"), run("loo"))
    assert torch.equal(run("denoiser", temperature=0.7), run("loo", temperature=0.7))


# ---- c. confidence on MDM: finite, exact-denoiser ranking ---------------------------------------------

def _brute_force_confidence(law, proc, prompt, mask, nfe, masked_rank_inf=False):
    """The MDM confidence sampler by brute force, row by row, from the exact denoiser.

    With ``masked_rank_inf`` every masked position gets the same rank (+inf, the reference's defect)
    and ties go to the lowest index."""
    k, length = law.vocab_size, law.length
    alphas = proc.alpha(torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64)).tolist()
    alphas[-1] = 1.0
    out = []
    for row in range(prompt.shape[0]):
        x = torch.where(mask[row], prompt[row], torch.full_like(prompt[row], k))
        for j in range(nfe):
            at, as_ = alphas[j], alphas[j + 1]
            d = exact.mdm_denoiser(law, x[None], at)[0]
            masked = [i for i in range(length) if int(x[i]) == k]
            count = round(len(masked) * ((as_ - at) / (1.0 - at)))
            key = (lambda i: i) if masked_rank_inf else (lambda i, d=d: (-float(d[i].max()), i))
            for i in sorted(masked, key=key)[:count]:
                x[i] = int(d[i].argmax())
        out.append(x)
    return torch.stack(out)


@pytest.mark.parametrize("nfe", [1, 2, 3, 4, 7])
def test_mdm_confidence_follows_the_exact_denoisers_confidence(nfe):
    law = exact.random_law(3, 4, seed=11)
    proc = ddlm.MaskedDiffusion(3, ddlm.LinearSchedule())
    g = torch.Generator().manual_seed(nfe)
    n = 48
    prompt = torch.randint(3, (n, 4), generator=g)
    mask = torch.rand(n, 4, generator=g) < 0.3
    x = ddlm.sample(exact.model(law, proc, "denoiser"), proc, n, 4, nfe, sampler="confidence", prompt=prompt,
                    prompt_mask=mask)
    assert torch.equal(x, _brute_force_confidence(law, proc, prompt, mask, nfe))
    if nfe > 1:  # some step resolves some but not all masks: the rank order matters
        assert not torch.equal(x, _brute_force_confidence(law, proc, prompt, mask, nfe, masked_rank_inf=True))


def test_mdm_confidence_ranks_masked_positions_by_max_probability_not_by_index():
    """One step resolving one of four masked positions picks the most confident, here the last."""
    from ddlm.sampling import kernels as K

    d = torch.tensor([[[0.4, 0.3, 0.3], [0.5, 0.25, 0.25], [0.34, 0.33, 0.33], [0.05, 0.9, 0.05]]]).log()
    x = torch.full((1, 4), 3)
    out = K.confidence(x, d, x == 3, torch.tensor([1]))
    assert out.tolist() == [[3, 3, 3, 1]]
    out = K.confidence(x, d, x == 3, torch.tensor([2]))
    assert out.tolist() == [[3, 0, 3, 1]]


# ---- d. the generator drives every draw, corrector included ------------------------------------------------

RNG_CASES = [(kind, s) for kind in ("mdm", "udm", "audm") for s in SAMPLERS[kind]]
PREDICTIONS = {"mdm": "denoiser", "udm": "loo", "audm": "posterior"}


def _process(kind):
    return {"mdm": ddlm.MaskedDiffusion, "udm": ddlm.UniformDiffusion, "audm": ddlm.AbsorbingUniformDiffusion}[kind](
        3, ddlm.LinearSchedule())


@pytest.mark.parametrize("kind,sampler", RNG_CASES + [("udm", "corrector")], ids=lambda v: str(v))
def test_sampling_with_a_generator_never_touches_the_global_rng(kind, sampler):
    law = exact.random_law(3, 3, seed=5)
    proc = _process(kind)
    kw = {}
    if sampler == "corrector":
        sampler, kw = "ancestral", {"corrector": ddlm.GibbsCorrector(sweeps=2, k=1, selection="random")}

    def run(seed):
        return ddlm.sample(exact.model(law, proc, PREDICTIONS[kind]), proc, 200, 3, 9, sampler=sampler,
                           generator=torch.Generator().manual_seed(seed), **kw)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        before = torch.get_rng_state()
        a = run(0)
        assert torch.equal(torch.get_rng_state(), before)
        torch.manual_seed(2)  # another global state: the same samples
        assert torch.equal(run(0), a)
        if (kind, sampler) != ("mdm", "confidence"):  # greedy from an all-mask prior: no draw at all
            assert not torch.equal(run(1), a)


@pytest.mark.parametrize("selection", ["random", "lowest_maxprob", "lowest_current_prob", "lowest_log_margin"])
def test_corrector_draws_follow_the_generator_alone(selection):
    """The corrector on its own (a fixed state and LOO, so no predictor draw is involved): its position
    choice and its redraws come from the generator only."""
    law, alpha = exact.random_law(3, 3, seed=5), 0.6
    proc = _udm(law)
    x = torch.randint(3, (2000, 3), generator=torch.Generator().manual_seed(3))
    view = _corrector_view(law, proc, exact.model(law, proc, "loo"), x, alpha)
    step = Step(t=1.0 - alpha, alpha_t=alpha, alpha_s=alpha, free=torch.ones_like(x, dtype=torch.bool), process=proc)
    corr = ddlm.GibbsCorrector(sweeps=1, k=1, selection=selection)

    def run(seed):
        return corr.correct(State(x), view, step, torch.Generator().manual_seed(seed)).xt

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        before = torch.get_rng_state()
        a = run(0)
        assert torch.equal(torch.get_rng_state(), before)
        torch.manual_seed(2)
        assert torch.equal(run(0), a)
        assert bool((a != x).any())
        assert not torch.equal(run(1), a)


# ---- top-p at ties (a documented difference, not a defect) ---------------------------------------------

def test_top_p_keeps_the_smallest_set_reaching_p_at_ties():
    """ddlm keeps the smallest set of tokens whose mass reaches p: with two tokens tied at 0.5 and
    p = 0.5 one of them is kept (the reference keeps both: it drops a token only when the mass
    before it exceeds p)."""
    logp = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64).log()
    assert int(torch.isfinite(top_p_filter(logp, 0.5)).sum()) == 1
    assert int(torch.isfinite(top_p_filter(logp, 0.5 + 1e-9)).sum()) == 2
