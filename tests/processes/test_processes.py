import pytest
import torch

from ddlm import exact
from ddlm.processes import AbsorbingUniformDiffusion, MaskedDiffusion, State, UniformDiffusion, get_process
from ddlm.schedules import CosineSchedule

N = 200_000


def _empirical_kernel(x0, xt, k_in, k_out):
    """Empirical q(x_t = j | x_0 = i) from flat samples."""
    counts = torch.zeros(k_in, k_out, dtype=torch.float64)
    counts.index_put_((x0.flatten(), xt.flatten()), torch.ones(x0.numel(), dtype=torch.float64), accumulate=True)
    return counts / counts.sum(-1, keepdim=True)


@pytest.mark.parametrize("t", [0.2, 0.7])
def test_corruption_matches_the_kernel(t):
    k = 4
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(k, (N // 10, 10), generator=g)
    for proc in (MaskedDiffusion(k), UniformDiffusion(k), AbsorbingUniformDiffusion(k)):
        out = proc.corrupt(x0, t, generator=g)
        assert isinstance(out, State) and (out.noise is not None) == proc.has_noise
        a = proc.alpha(torch.tensor(t, dtype=torch.float64)).item()
        if isinstance(proc, MaskedDiffusion):
            emp = _empirical_kernel(x0, out.xt, k, k + 1)
            want = torch.cat([a * torch.eye(k), torch.full((k, 1), 1 - a)], dim=1).double()
        else:
            emp = _empirical_kernel(x0, out.xt, k, k)
            want = (a * torch.eye(k) + (1 - a) / k).double()
        assert torch.allclose(emp, want, atol=0.006), proc.name


def test_audm_carry_over_and_active_positions():
    k = 5
    proc = AbsorbingUniformDiffusion(k)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(k, (4000, 8), generator=g)
    st = proc.corrupt(x0, 0.5, generator=g)
    assert isinstance(st, State)
    # every position is either clean or its noise token
    assert bool(((st.xt == x0) | (st.xt == st.noise)).all())
    # inactive positions are certainly clean (carry-over)
    assert bool((st.xt[~st.active] == x0[~st.active]).all())
    # the jump probability is 1 - alpha: P(x_t = u and x_0 != u) = (1 - alpha)(K - 1)/K
    a = proc.alpha(torch.tensor(0.5, dtype=torch.float64)).item()
    frac = ((st.xt == st.noise) & (x0 != st.noise)).double().mean().item()
    assert frac == pytest.approx((1 - a) * (k - 1) / k, abs=0.01)
    # given noise is used as is
    st2 = proc.corrupt(x0, 0.5, generator=g, noise=st.noise)
    assert torch.equal(st2.noise, st.noise)


def test_audm_averaged_over_noise_matches_udm_joint_monte_carlo():
    """Pairs (x_0, x_t) from AUDM and from UDM have the same law (per position, with a toy p_0)."""
    law = exact.random_law(3, 2, seed=3)
    g = torch.Generator().manual_seed(2)
    x0 = law.sample(N, generator=g)
    t = torch.rand(N, generator=g, dtype=torch.float64)
    udm, audm = UniformDiffusion(3, CosineSchedule()), AbsorbingUniformDiffusion(3, CosineSchedule())
    xa = audm.corrupt(x0, t, generator=g).xt
    xu = udm.corrupt(x0, t, generator=g).xt

    def joint(xt):  # empirical law of the pair (x_0, x_t) over 3^4 = 81 cells
        cell = law.index(x0) * 9 + law.index(xt)
        return torch.bincount(cell, minlength=81).double() / N

    assert 0.5 * (joint(xa) - joint(xu)).abs().sum().item() < 0.01


def test_priors():
    g = torch.Generator().manual_seed(0)
    m = MaskedDiffusion(7)
    assert m.mask_id == 7 and m.input_vocab_size == 8
    assert bool((m.prior((3, 4)).xt == 7).all()) and m.prior((3, 4)).noise is None
    u = UniformDiffusion(7).prior((2000, 4), generator=g).xt
    assert u.min() == 0 and u.max() == 6
    st = AbsorbingUniformDiffusion(7).prior((5, 4), generator=g)
    assert torch.equal(st.xt, st.noise) and bool(st.active.all())


def test_seeded_runs_are_identical():
    x0 = torch.randint(6, (8, 16), generator=torch.Generator().manual_seed(0))
    for name in ("mdm", "udm", "audm"):
        p = get_process(name, 6)
        a = p.corrupt(x0, 0.5, generator=torch.Generator().manual_seed(3))
        b = p.corrupt(x0, 0.5, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a.xt, b.xt) and (a.noise is None or torch.equal(a.noise, b.noise))


def test_per_sequence_times():
    p = MaskedDiffusion(5)
    x0 = torch.randint(5, (2, 5000))
    out = p.corrupt(x0, torch.tensor([0.0, 1.0])).xt
    assert torch.equal(out[0], x0[0])
    assert (out[1] == 5).double().mean().item() == pytest.approx(1 - p.schedule.eps, abs=0.01)


def test_bad_inputs():
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 2, got 1"):
        UniformDiffusion(1)
    p = UniformDiffusion(4)
    with pytest.raises(ValueError, match=r"x0 holds token id 4, expected ids in \[0, 3\]"):
        p.corrupt(torch.tensor([[0, 4]]), 0.5)
    with pytest.raises(ValueError, match="t must lie in"):
        p.corrupt(torch.tensor([[0, 1]]), 1.5)
    with pytest.raises(ValueError, match="t has shape"):
        p.corrupt(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0.1, 0.2, 0.3, 0.4]))
    with pytest.raises(ValueError, match="noise has shape"):
        AbsorbingUniformDiffusion(4).corrupt(torch.zeros(2, 3, dtype=torch.long), 0.5,
                                             noise=torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="process must be one of"):
        get_process("sedd", 4)
    with pytest.raises(ValueError, match="noise must be None for UDM"):
        p.corrupt(torch.zeros(2, 3, dtype=torch.long), 0.5, noise=torch.zeros(2, 3, dtype=torch.long))


def test_protocol_tables_are_consistent():
    from ddlm.processes import REGISTRY

    assert set(REGISTRY) == {"mdm", "udm", "audm", "d3pm"}
    for name, cls in REGISTRY.items():
        p = get_process(name, 4)
        assert p.default_prediction == cls.predictions[0] and set(cls.views) == set(cls.predictions)
        assert set(cls.views.values()) <= {"denoiser", "loo", "score"}
        assert ("score" in cls.views.values()) == (cls.score_graph is not None)
        assert cls.default_output in cls.network_outputs and set(cls.network_outputs) <= set(cls.predictions)
        assert cls.temperature_views and all(v in cls.views for v in cls.temperature_views)
        assert "ancestral" in cls.kernels and p.elbo == cls.objectives[0]
        with pytest.raises(ValueError, match=f"prediction must be one of .* for {p.label}, got 'x1'"):
            p.view("x1")
    with pytest.raises(ValueError, match="prediction must be one of .* for AUDM, got 'score'"):
        AbsorbingUniformDiffusion(4).view("score")
    # what a network declares by default: the LOO for UDM
    assert UniformDiffusion(4).default_prediction == "loo"
    assert MaskedDiffusion(4).default_prediction == "denoiser"
    assert AbsorbingUniformDiffusion(4).default_prediction == "posterior"


def test_resolve_prediction():
    p = UniformDiffusion(4)

    class Declares:
        prediction = "denoiser"

    assert p.resolve_prediction(Declares()) == "denoiser"
    assert p.resolve_prediction(Declares(), "denoiser") == "denoiser"
    with pytest.raises(ValueError,
                       match="prediction='loo' contradicts the model, which declares model.prediction = 'denoiser'"):
        p.resolve_prediction(Declares(), "loo")
    assert p.resolve_prediction(lambda xt, t: None) == "loo"  # a bare callable: the documented default
    assert p.resolve_prediction(lambda xt, t: None, "denoiser") == "denoiser"
    # aliases of the same view do not contradict (the AUDM posterior is its denoiser view)
    q = AbsorbingUniformDiffusion(4)
    q.resolve_prediction(type("M", (), {"prediction": "posterior"})(), "denoiser")
