"""ddlm.bound: the per-token ELBO of a batch and the validation bound, shared by training and evaluation
(the file is not test_bound.py, which tests/evaluate/ holds for ddlm.evaluate.bound)."""

import math

import torch

from ddlm.bound import ELBO, corrupt, stratified_times, token_losses, validation_bound
from ddlm.models.ar import ARConfig, ARTransformer
from ddlm.models.diffusion import DiffusionModel


def test_stratified_times_cover_the_unit_interval():
    t = stratified_times(0.3, torch.arange(8), 8, 0.0)
    want = (torch.arange(8, dtype=torch.float64) / 8 + 0.3) % 1.0
    assert torch.allclose(torch.sort(t).values, torch.sort(want).values)
    # ranks and accumulation steps take disjoint strata of one global batch
    halves = torch.cat([stratified_times(0.3, torch.arange(4), 8, 0.0),
                        stratified_times(0.3, torch.arange(4, 8), 8, 0.0)])
    assert torch.allclose(torch.sort(halves).values, torch.sort(t).values)


def test_corrupt_gives_noise_for_audm_only():
    x0 = torch.randint(0, 6, (4, 8))
    t = torch.full((4,), 0.5, dtype=torch.float64)
    for name in ("mdm", "udm", "audm"):
        model = DiffusionModel.build(name, 6, 8, hidden=16, blocks=1, heads=2)
        xt, noise = corrupt(model.process, x0, t, torch.Generator().manual_seed(0))
        assert xt.shape == x0.shape and (noise is not None) == (name == "audm")
        assert token_losses(model.eval(), ELBO[name], x0, xt, noise, t).shape == (4, 8)


def test_validation_bound_is_the_mean_of_its_batches_and_exact_for_ar():
    torch.manual_seed(0)
    blocks = torch.randint(0, 6, (6, 8))
    model = DiffusionModel.build("mdm", 6, 8, hidden=16, blocks=1, heads=2).eval()
    mean, se = validation_bound(model, blocks, 3, 2, seed=1, t_min=1e-3)
    assert math.isfinite(mean) and se > 0  # two batches: a standard error
    assert (mean, se) == validation_bound(model, blocks, 3, 2, seed=1, t_min=1e-3)  # seeded
    ar = ARTransformer(ARConfig.preset("tiny", 6, 8, hidden=16, blocks=1, heads=2)).eval()
    exact, _ = validation_bound(ar, blocks, 6, 1, seed=0, t_min=0.0)
    with torch.no_grad():
        assert math.isclose(exact, float(ar.block_losses(blocks).mean()), rel_tol=1e-6)


def test_the_bound_of_a_score_network_is_its_score_entropy():
    """A score network is scored by SEDD's bound (score entropy), not by the process's ELBO of its
    converted prediction: for masked diffusion the two differ by lambda phi(log S - log(alpha/(1-alpha)))."""
    from ddlm.bound import stratified_times

    torch.manual_seed(0)
    blocks = torch.randint(0, 6, (6, 8))
    model = DiffusionModel.build("mdm", 6, 8, output="score", hidden=16, blocks=1, heads=2).eval()
    assert model.process.bound_objective("score") == "score_entropy"
    assert model.process.bound_objective("denoiser") == "mdm_elbo"
    mean, _ = validation_bound(model, blocks, 6, 1, seed=1, t_min=1e-3)
    g = torch.Generator().manual_seed(1)
    t = stratified_times(float(torch.rand((), generator=g, dtype=torch.float64)), torch.arange(6), 6, 1e-3)
    xt, noise = corrupt(model.process, blocks, t, g)
    with torch.no_grad():
        se = token_losses(model, "score_entropy", blocks, xt, noise, t).mean().item()
        elbo = token_losses(model, "mdm_elbo", blocks, xt, noise, t).mean().item()
    assert math.isclose(mean, se, rel_tol=1e-9) and elbo < se - 1e-3
