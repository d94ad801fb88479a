"""D3PM's objectives (``ddlm.losses.d3pm_vb``, ``d3pm_elbo``, ``d3pm_hybrid``, ``d3pm_cross_entropy``)
against brute-force matrices and the exact oracle (docs/maths.md §9)."""

import pytest
import torch

import ddlm
from ddlm import exact, losses
from ddlm.processes import D3PM

X = exact.d3pm


def _processes():
    g = torch.Generator().manual_seed(4)
    q = torch.rand(5, 4, 4, generator=g, dtype=torch.float64) + 0.3 * torch.eye(4, dtype=torch.float64)
    return [D3PM.uniform(4, 6), D3PM.absorbing(4, 6), D3PM.gaussian(4, 6), D3PM.band(4, 6),
            D3PM(q / q.sum(-1, keepdim=True))]


def _brute_vb(p, logits, x0, xt, t):
    """sum_j q(j) log(q(j)/p(j)) with q and p written from the dense matrices (float64)."""
    qbar, q = X.cumulative(p), p.family.dense()
    post = X.posterior(p, x0, xt, t).exp()
    r = logits.double().softmax(-1)
    w = (r @ qbar[t - 1][: p.vocab_size]) * q[t - 1][:, xt].movedim(0, -1)
    rev = w / w.sum(-1, keepdim=True)
    return torch.where(post > 0, post * (post.log() - rev.log()), torch.zeros_like(post)).sum(-1)


@pytest.mark.parametrize("idx", range(5))
def test_vb_equals_the_kl_written_with_matrices(idx):
    p = _processes()[idx]
    g = torch.Generator().manual_seed(idx)
    x0 = torch.randint(p.vocab_size, (3, 7), generator=g)
    t = torch.randint(1, p.steps + 1, (3, 1), generator=g)
    t[0] = 1
    xt = torch.stack([p.family.sample_forward(x0[b], t[b].expand(7), g) for b in range(3)])
    logits = torch.randn(3, 7, p.vocab_size, generator=g, dtype=torch.float64)
    got = losses.d3pm_vb(logits, x0, xt, t, p)
    want = torch.stack([_brute_vb(p, logits[b], x0[b], xt[b], int(t[b])) for b in range(3)])
    assert torch.allclose(got, want, atol=1e-12)
    assert float(got.min()) >= -1e-12
    # t = 1: the reconstruction term -log p(x_0 | x_1)
    rec = -p.reverse(logits[0], xt[0], 1).gather(-1, x0[0, :, None]).squeeze(-1)
    assert torch.allclose(got[0], rec, atol=1e-12)
    # float32 logits give the same values to float32 accuracy, and finite gradients
    lg = logits.float().requires_grad_(True)
    v32 = losses.d3pm_vb(lg, x0, xt, t, p)
    v32.sum().backward()
    assert v32.dtype == torch.float32 and torch.allclose(v32.double(), got, atol=1e-4)
    assert bool(torch.isfinite(lg.grad).all())


def test_bad_inputs_get_named_errors():
    p = D3PM.uniform(4, 10)
    x0 = torch.zeros(2, 3, dtype=torch.long)
    logits = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"t holds step 0, expected integer steps in \[1, 10\]"):
        losses.d3pm_vb(logits, x0, x0, 0, p)
    with pytest.raises(ValueError, match=r"t holds step 11, expected integer steps in \[1, 10\]"):
        losses.d3pm_vb(logits, x0, x0, torch.tensor([[3], [11]]), p)
    with pytest.raises(TypeError, match="t must hold integer steps"):
        losses.d3pm_vb(logits, x0, x0, torch.tensor([[0.5], [0.2]]), p)
    with pytest.raises(ValueError, match="t has shape"):
        losses.d3pm_vb(logits, x0, x0, torch.ones(5, dtype=torch.long), p)
    with pytest.raises(ValueError, match="logp has 5 columns, expected K = 4"):
        losses.d3pm_vb(torch.zeros(2, 3, 5), x0, x0, 1, p)
    with pytest.raises(ValueError, match=r"xt holds token id 4, expected ids in \[0, 3\]"):
        losses.d3pm_vb(logits, x0, torch.full_like(x0, 4), 1, p)
    with pytest.raises(ValueError, match="logp has shape"):
        losses.d3pm_vb(torch.zeros(2, 4, 4), x0, x0, 1, p)


@pytest.mark.parametrize("make", [D3PM.uniform, D3PM.absorbing], ids=["uniform", "absorbing"])
def test_stable_at_gpt2_vocabulary_and_1000_steps(make):
    k, t_steps = 50_257, 1000
    p = make(k, t_steps)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(k, (2, 6), generator=g)
    t = torch.tensor([[1], [2], [500], [999], [1000], [37]]).reshape(2, 3).repeat_interleave(2, 1)
    xt = p.family.sample_forward(x0.reshape(-1), t.reshape(-1), g).reshape(2, 6)
    logits = (3 * torch.randn(2, 6, k, generator=g)).requires_grad_(True)
    vb = losses.d3pm_vb(logits, x0, xt, t, p)
    vb.sum().backward()
    assert bool(torch.isfinite(vb).all()) and float(vb.detach().min()) >= -1e-4
    assert bool(torch.isfinite(logits.grad).all())
    v64 = losses.d3pm_vb(logits.detach().double(), x0, xt, t, p)
    assert torch.allclose(vb.double(), v64, rtol=1e-4, atol=1e-4)
    # a network certain of x_0 pays (almost) nothing at any step
    sure = torch.full((2, 6, k), -30.0).scatter(-1, x0.unsqueeze(-1), 30.0)
    assert float(losses.d3pm_vb(sure, x0, xt, t, p).max()) < 1e-6
    assert bool(torch.isfinite(p.prior_kl(x0)).all()) and float(p.prior_kl(x0).max()) < 1e-5


# ---- minimisers over free logits ------------------------------------------------------------------

def _fit(objective, p, law, xt, t, steps=300):
    """Logits minimising E_{x_0 | x_t}[sum_i objective] for one state x_t (exact posterior weights)."""
    ll = p.token_loglik(xt[None], law.sequences, p.alphas[t].reshape(1)).sum(-1)[0]
    w = (law.p0.log() + ll).softmax(0)  # q(x_0 | x_t)
    n0 = law.num_states
    logits = torch.zeros(law.length, p.vocab_size, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([logits], lr=1, max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        big = logits[None].expand(n0, -1, -1)
        loss = (w * objective(big, law.sequences, xt[None].expand(n0, -1), t, p).sum(-1)).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return logits.detach().log_softmax(-1)


@pytest.mark.parametrize("make", [lambda: D3PM.uniform(3, 5), lambda: D3PM.gaussian(3, 5),
                                  lambda: D3PM.absorbing(3, 5)], ids=["uniform", "gaussian", "absorbing"])
def test_vb_is_minimised_by_the_loo_and_cross_entropy_by_the_denoiser(make):
    p = make()
    law = exact.random_law(3, 3, seed=2)
    xt = torch.tensor([2, 0, 3 if p.mask_id is not None else 1])
    # (Gaussian Q_1 moves a token with probability ~1e-22: the step-1 term leaves p~ unidentified in float64)
    for t in ((3, 5) if p.kind == "dense" else (1, 3)):
        a = p.alphas[t].reshape(1)
        loo = exact.posterior(law, p, xt[None], a, leave_one_out=True)[0]
        den = exact.posterior(law, p, xt[None], a)[0]
        at = (xt == p.mask_id) if p.mask_id is not None else torch.ones(3, dtype=torch.bool)  # identified positions
        got = _fit(losses.d3pm_vb, p, law, xt, t)
        assert torch.allclose(got.exp()[at], loo.exp()[at], atol=1e-5), (got.exp(), loo.exp())
        assert torch.allclose(_fit(losses.d3pm_cross_entropy, p, law, xt, t).exp(), den.exp(), atol=1e-5)
        if p.mask_id is None:
            assert (loo.exp() - den.exp()).abs().max() > 0.01  # so the two minimisers differ


def test_hybrid_lambda_pulls_the_minimiser_towards_the_denoiser():
    law = exact.random_law(3, 3, seed=2)
    xt, t = torch.tensor([2, 0, 1]), 2
    base = D3PM.uniform(3, 5, hybrid_lambda=0.0)
    a = base.alphas[t].reshape(1)
    loo = exact.posterior(law, base, xt[None], a, leave_one_out=True)[0].exp()
    den = exact.posterior(law, base, xt[None], a)[0].exp()
    assert torch.allclose(_fit(losses.d3pm_hybrid, base, law, xt, t).exp(), loo, atol=1e-5)
    dist = []
    for lam in (0.1, 1.0, 10.0):
        got = _fit(losses.d3pm_hybrid, D3PM.uniform(3, 5, hybrid_lambda=lam), law, xt, t).exp()
        dist.append(float((got - den).abs().max()))
        assert float((got - loo).abs().max()) > 1e-3
    assert dist[0] > dist[1] > dist[2]


# ---- the estimators ----------------------------------------------------------------------------------

def test_elbo_and_hybrid_estimators():
    p = D3PM.uniform(4, 10, schedule=ddlm.CosineSchedule(eps=0.05), hybrid_lambda=0.3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(4, (2, 5), generator=g)
    t = torch.tensor([[3], [10]])
    xt = torch.stack([p.family.sample_forward(x0[b], t[b].expand(5), g) for b in range(2)])
    logits = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    vb = losses.d3pm_vb(logits, x0, xt, t, p)
    ce = losses.d3pm_cross_entropy(logits, x0, xt, t, p)
    prior = p.prior_kl(x0)
    assert float(prior.min()) > 0  # alphabar_T = 0.05: the prior term is not zero
    assert torch.allclose(losses.d3pm_elbo(logits, x0, xt, t, p), 10 * vb + prior)
    assert torch.allclose(losses.d3pm_hybrid(logits, x0, xt, t, p), 10 * (vb + 0.3 * ce) + prior)
    assert torch.allclose(ce, -logits.log_softmax(-1).gather(-1, x0[..., None]).squeeze(-1))


def test_step_probs_keep_the_training_estimator_unbiased():
    """With importance-sampled steps the expected objective is still the bound; ignoring the weights
    (w = T) would not be."""
    law = exact.random_law(3, 2, seed=3)
    probs = torch.tensor([0.4, 0.3, 0.1, 0.1, 0.05, 0.05], dtype=torch.float64)
    p = D3PM.uniform(3, 6, step_probs=probs)
    plain = D3PM.uniform(3, 6)
    want = X.bound(law, plain, "denoiser")
    assert torch.allclose(exact.elbo(law, p, losses.d3pm_elbo, "denoiser"), want, atol=1e-12)
    assert torch.allclose(exact.elbo(law, plain, losses.d3pm_elbo, "denoiser"), want, atol=1e-12)

    def unweighted(logp, x0, xt, t, proc):
        return proc.steps * losses.d3pm_vb(logp, x0, xt, t, proc) + proc.prior_kl(x0)

    assert (exact.elbo(law, p, unweighted, "denoiser") - want).abs().max() > 0.05
    # Monte Carlo through the training path: uniform t -> steps from step_probs -> weighted loss
    g = torch.Generator().manual_seed(0)
    x0 = law.sample(40_000, generator=g)
    u = torch.rand(x0.shape[0], generator=g, dtype=torch.float64)
    st = p.corrupt(x0, u, generator=g)
    f = p.exact_predictor(law, "loo")
    n = p.step_of(u)
    logp = torch.cat([f(st.xt[n == m], p.alphas[m].expand(int((n == m).sum()))) for m in range(1, 7)])
    order = torch.cat([(n == m).nonzero().squeeze(1) for m in range(1, 7)])
    loss = p.loss("d3pm_elbo", logp, "loo", x0[order], st.rows(order), 0.5, -1.0, t=u[order]).sum(-1)
    mean, se = float(loss.mean()), float(loss.std() / loss.numel() ** 0.5)
    assert abs(mean - float((X.bound(law, plain, "loo") * law.p0).sum())) < 4 * se
