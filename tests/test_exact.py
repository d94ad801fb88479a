import itertools
import math

import pytest
import torch

from conftest import random_noisy
from ddlm import exact
from ddlm.processes import AbsorbingUniformDiffusion, MaskedDiffusion, UniformDiffusion


def _brute_force_joint(law, xt, alpha, process="udm", noise=None):
    """p_0(x_0) q_t(x_t | x_0) for one x_t, by explicit Python loops (independent of the oracle)."""
    k = law.vocab_size
    out = {}
    for x0 in itertools.product(range(k), repeat=law.length):
        p = float(law.p0[law.index(torch.tensor(x0))])
        for i, y in enumerate(x0):
            x = int(xt[i])
            if process == "udm":
                p *= alpha * (x == y) + (1 - alpha) / k
            elif process == "mdm":
                p *= alpha * (x == y) + (1 - alpha) * (x == k)
            else:
                p *= alpha * (x == y) + (1 - alpha) * (x == int(noise[i]))
        out[x0] = p
    return out


def _marginal_from_joint(joint, k, i):
    m = torch.zeros(k, dtype=torch.float64)
    for x0, p in joint.items():
        m[x0[i]] += p
    return m / m.sum()


def test_oracle_matches_explicit_bayes():
    law = exact.random_law(3, 2, seed=5)
    alpha = 0.37
    for xt in [torch.tensor([0, 2]), torch.tensor([1, 1])]:
        joint = _brute_force_joint(law, xt, alpha)
        d = exact.denoiser(law, xt[None], alpha)[0].exp()
        for i in range(2):
            assert torch.allclose(d[i], _marginal_from_joint(joint, 3, i), atol=1e-12)
        # LOO: drop position i's likelihood
        r = exact.loo(law, xt[None], alpha)[0].exp()
        for i in range(2):
            m = torch.zeros(3, dtype=torch.float64)
            for x0 in itertools.product(range(3), repeat=2):
                p = float(law.p0[law.index(torch.tensor(x0))])
                j = 1 - i
                p *= alpha * (int(xt[j]) == x0[j]) + (1 - alpha) / 3
                m[x0[i]] += p
            assert torch.allclose(r[i], m / m.sum(), atol=1e-12)
        # score: ratio of marginals
        s = exact.score(law, xt[None], alpha)[0]
        pt = sum(joint.values())
        for i, y in itertools.product(range(2), range(3)):
            nb = xt.clone()
            nb[i] = y
            want = math.log(sum(_brute_force_joint(law, nb, alpha).values()) / pt)
            assert s[i, y].item() == pytest.approx(want, abs=1e-12)


def test_mdm_and_audm_oracles_match_explicit_bayes():
    law = exact.random_law(3, 2, seed=6)
    alpha = 0.6
    xt = torch.tensor([3, 1])  # position 0 masked
    joint = _brute_force_joint(law, xt, alpha, "mdm")
    d = exact.mdm_denoiser(law, xt[None], alpha)[0].exp()
    for i in range(2):
        assert torch.allclose(d[i], _marginal_from_joint(joint, 3, i), atol=1e-12)
    assert d[1, 1].item() == pytest.approx(1.0, abs=1e-12)  # unmasked: point mass
    xt, u = torch.tensor([2, 1]), torch.tensor([2, 0])  # position 0 active, position 1 carried over
    joint = _brute_force_joint(law, xt, alpha, "audm", noise=u)
    p = exact.audm_posterior(law, xt[None], u[None], alpha)[0].exp()
    for i in range(2):
        assert torch.allclose(p[i], _marginal_from_joint(joint, 3, i), atol=1e-12)
    assert p[1, 1].item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.05, 0.5, 0.95])
def test_marginals_are_normalised(law, alpha):
    for process, k in (("udm", law.vocab_size), ("mdm", law.vocab_size + 1)):
        states = exact.all_sequences(k, law.length)
        assert exact.log_marginal(law, states, alpha, process).exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    xt = random_noisy(law, 5)
    for f in (exact.denoiser, exact.loo):
        assert torch.allclose(f(law, xt, alpha).exp().sum(-1), torch.ones(5, law.length, dtype=torch.float64))


def test_audm_averaged_over_noise_is_the_udm_joint(law):
    """sum_u q(x_t, u | x_0) equals the UDM kernel q_t(x_t | x_0), by enumeration."""
    alpha = torch.tensor(0.3, dtype=torch.float64)
    k, n = law.vocab_size, law.num_states
    seq = law.sequences
    udm = exact.token_loglik("udm", seq, seq, alpha.expand(n), k).sum(-1).exp()  # (x_t, x_0)
    audm = torch.zeros(n, n, dtype=torch.float64)
    for u in seq:
        ll = exact.token_loglik("audm", seq, seq, alpha.expand(n), k, noise=u.expand(n, -1)).sum(-1)
        audm += (ll - law.length * math.log(k)).exp()
    assert torch.allclose(audm, udm, atol=1e-14)


def test_model_wrapper_uses_schedule_and_checks_vocab():
    law = exact.random_law(3, 3, seed=1)
    proc = UniformDiffusion(3)
    m = exact.model(law, proc)
    xt = random_noisy(law, 4)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9])
    assert torch.allclose(m(xt, t), exact.loo(law, xt, proc.alpha(t.double())), atol=1e-14)
    with pytest.raises(ValueError, match="vocab_size is 4"):
        exact.model(law, UniformDiffusion(4))
    with pytest.raises(ValueError,
                       match=r"prediction must be one of \('denoiser', 'loo', 'score'\) for MDM, got 'posterior'"):
        exact.model(law, MaskedDiffusion(3), "posterior")
    # at a masked position the MDM LOO is the denoiser: the same oracle under either name
    xm = torch.tensor([[3, 0, 3]])
    tm = torch.tensor([0.5])
    via_loo = exact.model(law, MaskedDiffusion(3), "loo")(xm, tm)
    assert torch.equal(via_loo, exact.model(law, MaskedDiffusion(3))(xm, tm))
    assert exact.model(law, MaskedDiffusion(3), "loo").prediction == "loo"
    assert exact.model(law, AbsorbingUniformDiffusion(3)).prediction == "posterior"
    assert exact.model(law, proc).prediction == "loo"


def test_tv_distance_and_sampling():
    law = exact.random_law(2, 3, seed=2)
    g = torch.Generator().manual_seed(0)
    samples = law.sample(200_000, generator=g)
    assert exact.tv_distance(law, samples) < 0.01
    point = law.sequences[:1].expand(100, -1)
    assert exact.tv_distance(law, point) == pytest.approx(1 - law.p0[0].item(), abs=1e-12)


def test_tanh_sinh_integrates_endpoint_singularities():
    t, omt, w = exact.tanh_sinh_nodes(5)
    assert (w * torch.log(t)).sum().item() == pytest.approx(-1.0, abs=1e-10)
    assert (w / torch.sqrt(omt)).sum().item() == pytest.approx(2.0, abs=1e-8)


def test_bad_inputs():
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 2"):
        exact.random_law(1, 3)
    law = exact.random_law(3, 2)
    with pytest.raises(ValueError, match="xt has length 3, expected the law's length 2"):
        exact.denoiser(law, torch.zeros(1, 3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="alpha must lie in"):
        exact.loo(law, torch.zeros(1, 2, dtype=torch.long), 1.5)
    with pytest.raises(ValueError, match="p0 has shape"):
        exact.ToyLaw(torch.ones(5, dtype=torch.float64) / 5, 3, 2)
