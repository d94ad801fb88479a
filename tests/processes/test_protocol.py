"""Conformance of every registered process to the ``Process`` protocol, checked against the exact
oracle. A new process registered with ``ddlm.processes.register_process`` runs through these tests
with no edit here (docs/extending.md)."""

import pytest
import torch

import ddlm
from ddlm import exact, losses
from ddlm.models.diffusion import DiffusionModel
from ddlm.processes import REGISTRY, State, get_process
from ddlm.schedules import LinearSchedule

NAMES = sorted(REGISTRY)
LAW = exact.random_law(3, 2, seed=7)


def _proc(name, eps=0.0):
    return get_process(name, 3, LinearSchedule(eps=eps))


@pytest.mark.parametrize("name", NAMES)
def test_prior_and_corruption_give_states_of_the_declared_kind(name):
    p = _proc(name, 1e-3)
    g = torch.Generator().manual_seed(0)
    for st in (p.prior((4, 5), generator=g), p.corrupt(torch.randint(3, (4, 5), generator=g), 0.5, generator=g)):
        assert isinstance(st, State) and st.xt.shape == (4, 5) and st.xt.dtype == torch.long
        assert (st.noise is not None) == p.has_noise
        assert int(st.xt.min()) >= 0 and int(st.xt.max()) < p.input_vocab_size


@pytest.mark.parametrize("name", NAMES)
def test_corruption_follows_token_loglik(name):
    """The empirical law of (x_0, x_t) from ``corrupt`` equals the one ``token_loglik`` states."""
    p = _proc(name)
    n, t = 200_000, 0.6
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(3, (n, 1), generator=g)
    st = p.corrupt(x0, t, generator=g)
    a = p.alpha(torch.tensor([t], dtype=torch.float64))
    states = p.exact_states(1)
    lik = p.token_loglik(states.xt, torch.arange(3)[:, None], a.expand(states.xt.shape[0]), states.noise)
    # (S, 3): P(state | x_0) including the law of the noise tokens
    want = (lik[..., 0] + p.exact_noise_logweight(1)).exp()
    key = st.xt[:, 0] if st.noise is None else st.xt[:, 0] * 3 + st.noise[:, 0]
    skey = states.xt[:, 0] if states.noise is None else states.xt[:, 0] * 3 + states.noise[:, 0]
    for y in range(3):
        sel = key[x0[:, 0] == y]
        emp = torch.stack([(sel == s).double().mean() for s in skey])
        assert torch.allclose(emp, want[:, y], atol=0.006), (name, y)


@pytest.mark.parametrize("name", NAMES)
def test_exact_bound_of_the_default_prediction_is_tight(name):
    p = _proc(name)
    fn = losses.OBJECTIVES[p.elbo][0]
    bound = exact.elbo(LAW, p, fn)  # default prediction: p.default_prediction
    if p.steps is None:
        assert torch.allclose(bound, -LAW.p0.log(), atol=1e-6)
    else:  # discrete time (D3PM): factorised steps leave a gap of order 1/T, valid on average
        gap = float(((bound + LAW.p0.log()) * LAW.p0).sum())
        assert 0 < gap < 10.0 / p.steps


@pytest.mark.parametrize("name", NAMES)
def test_every_kernel_keeps_the_state_kind_and_every_objective_trains(name):
    p = _proc(name, 1e-3)
    model = exact.model(LAW, p)
    for sampler, kernel in p.kernels.items():
        assert kernel.consumes in ("denoiser", "loo", "score")
        x = ddlm.sample(model, p, 8, 2, 4, sampler=sampler, generator=torch.Generator().manual_seed(0))
        assert x.shape == (8, 2) and int(x.max()) < 3 and int(x.min()) >= 0
    net = DiffusionModel.build(name, 3, 4, hidden=16, blocks=1, heads=2)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(3, (2, 4), generator=g)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    st = p.corrupt(x0, t, generator=g)
    for objective in p.objectives:
        for output in p.network_outputs:
            logits = net(st.xt, t, st.noise)
            loss = p.loss(objective, logits, output, x0, st, p.alpha(t)[:, None].float(), p.dalpha(t)[:, None].float(),
                          t=t)
            assert loss.shape == (2, 4) and bool(torch.isfinite(loss).all())
    with pytest.raises(ValueError, match="objective must be one of"):
        p.loss("no_such_objective", logits, p.default_output, x0, st, 0.5, -1.0)
