"""Every family and format of the fixtures reproduces its project's own outputs (raw network output,
post-processed output; raw and EMA weights) to 1e-5 in float32, and ddlm's view of each agrees with
the reference's normalised clean-token log-probabilities after ddlm's conversions."""

import math

import pytest
import torch
from _fixtures import CASES, POST_KEY, RAW_KEY, io, load, manifest

from ddlm import conversions
from ddlm.pretrained.families import NEG_INFINITY, postprocess

TOL = 1e-5


def assert_matches(ours, ref, tol=TOL):
    """Max |ours - ref| <= tol, except at the families' "minus infinity" entries (-1e6 plus a logit,
    stored in float32 with a spacing of 0.0625), which must be such sentinels in both."""
    assert ours.shape == ref.shape
    finite = ref.abs() < 1e5
    assert (ours - ref)[finite].abs().max().item() <= tol
    assert bool((ours[~finite] <= -1e5).all()) and ((ours - ref)[~finite].abs().max().item() <= 1.0
                                                   if (~finite).any() else True)


@torch.no_grad()
@pytest.mark.parametrize("family,file,weights", CASES, ids=[f"{f}-{p.split('/')[0]}-{w}" for f, p, w in CASES])
def test_outputs_equal_the_reference(family, file, weights):
    d = io(family)
    model, process, _ = load(family, file, weights, tokenizer=None)
    noise = d.get("noise")
    raw = model.raw(d["x"], d["t"], noise)
    assert_matches(raw, d[f"{RAW_KEY[family]}.{weights}_weights"])
    post = model.family_output(d["x"], d["t"], noise)
    assert_matches(post, d[f"{POST_KEY[family]}.{weights}_weights"])
    if family.startswith("sedd"):
        torch.testing.assert_close(post.exp(), d[f"score.{weights}_weights"], atol=TOL, rtol=TOL)
    # the other set of weights is far away: a raw/EMA mix-up cannot pass
    other = "raw" if weights == "ema" else "ema"
    assert (raw - d[f"{RAW_KEY[family]}.{other}_weights"]).abs().max() > 100 * TOL


@torch.no_grad()
@pytest.mark.parametrize("family", ["mdlm", "duo", "udlm", "rev_udm_udlm_loo", "rev_udm_audm", "rev_udm_mdlm",
                                    "sedd_absorb", "sedd_uniform"])
def test_time_maps_to_the_family_conditioning(family):
    d = io(family)
    model, _, _ = load(family, "last.ckpt" if not family.startswith("sedd") else "hf")
    sigma = model.sigma(d["t"])
    if model.time_conditioned:
        assert torch.equal(sigma, d["sigma"])  # bitwise: the family's own float32 formula
        assert not torch.equal(model.raw(d["x"], d["t"], d.get("noise")),
                               model.raw(d["x"], d["t"].flip(0), d.get("noise")))
    else:  # zeroed time conditioning (MDLM's release, rev_udm's MDLM): the network ignores t
        assert torch.equal(d["sigma"], torch.zeros(3))
        assert torch.equal(model.raw(d["x"], d["t"]), model.raw(d["x"], torch.tensor([0.7, 0.2, 0.05])))
    total = -torch.log1p(-(1 - 1e-3) * d["t"])
    assert torch.allclose(sigma, total, atol=1e-6)


def _renormalised(logp, k):
    return torch.log_softmax(logp[..., :k].double(), dim=-1)


@torch.no_grad()
@pytest.mark.parametrize("family,file,weights", CASES, ids=[f"{f}-{p.split('/')[0]}-{w}" for f, p, w in CASES])
def test_ddlm_view_agrees_with_the_reference_after_conversions(family, file, weights):
    """ddlm's model gives the clean-token log-probabilities of the reference, normalised over the
    process's K tokens, at the positions its process reads (a SEDD score through the process's own
    ``convert_view``, as ddlm's samplers read it)."""
    d = io(family)
    model, process, _ = load(family, file, weights)
    x, t, noise = d["x"], d["t"], d.get("noise")
    k = process.vocab_size
    ref = d[f"{POST_KEY[family]}.{weights}_weights"].double()
    alpha = process.alpha(t.double()).unsqueeze(-1)
    out = model(x, t, noise).double()
    if model.prediction == "score":
        torch.testing.assert_close(out, ref[..., :k], atol=TOL, rtol=0)  # SEDD's own log-score, as is
    if family == "sedd_uniform":
        # r(y) = (K s(y)/sum s - (1 - alpha)) / (K alpha) cancels digits where r(y) is small, so the
        # log-probabilities of rare tokens amplify the 1e-6 float32 differences of the scores: compare
        # probabilities (well conditioned)
        ours = process.convert_view(out, x, alpha, "score", "loo")
        expected = conversions.score_to_loo(ref[..., :k], x, alpha)
        torch.testing.assert_close(ours.exp(), expected.exp(), atol=TOL, rtol=0)
        torch.testing.assert_close(conversions.loo_to_denoiser(ours, x, alpha).exp(),
                                   conversions.loo_to_denoiser(expected, x, alpha).exp(), atol=TOL, rtol=0)
        return
    if model.prediction == "score":
        out = process.convert_view(out, x, alpha, "score", "denoiser")
    ours = torch.log_softmax(out, dim=-1)  # ddlm's models return logits; their consumers normalise
    if process.label == "MDM":  # masked positions: the denoiser over the K data tokens
        masked = x == k
        assert masked.any()
        torch.testing.assert_close(ours[masked], _renormalised(ref, k)[masked], atol=TOL, rtol=0)
        return
    if process.label == "AUDM":  # active positions (x_t == u): the posterior over the K tokens
        active = x == noise
        assert active.any() and (~active).any()
        torch.testing.assert_close(ours[active], _renormalised(ref, k)[active], atol=TOL, rtol=0)
        return
    torch.testing.assert_close(ours, _renormalised(ref, k), atol=TOL, rtol=0)
    if model.prediction == "loo":  # the paper's UDM: rev_udm converts with K = rows (38), ddlm with K = 37
        rows = ref.shape[-1]
        ref_den = d[f"to_denoiser_logits.{weights}_weights"]  # raw + log1p(rows a / (1 - a)) at x_t, float64
        a = d["alpha_t"].double()[:, None]
        shift = torch.log1p(k * a / (1 - a)) - torch.log1p(rows * a / (1 - a))
        adjusted = ref_den[..., :k].scatter_add(-1, x[..., None], shift.expand_as(x)[..., None])
        torch.testing.assert_close(conversions.loo_to_denoiser(ours, x, alpha), torch.log_softmax(adjusted, -1),
                                   atol=TOL, rtol=0)
        # and rev_udm's own denoiser log-probs are the same numbers up to that K (and the dropped row)
        theirs = _renormalised(d[f"denoiser_log_probs.{weights}_weights"], k)
        gap = (conversions.loo_to_denoiser(ours, x, alpha) - theirs).abs().max().item()
        assert 0 < gap < math.log(rows / k) + 0.1


@pytest.mark.parametrize("family", ["mdlm", "duo", "udlm", "rev_udm_udlm_loo", "rev_udm_audm", "rev_udm_mdlm",
                                    "sedd_absorb", "sedd_uniform"])
def test_conventions_are_stated(family):
    m = manifest(family)
    model, process, _ = load(family, "last.ckpt" if not family.startswith("sedd") else "hf")
    c = model.conventions
    rows = m["vocab"].get("model_rows", m["vocab"].get("dit_rows"))
    k = m["vocab"].get("process_vocab_size", m["vocab"].get("tokens", rows if family != "mdlm" else rows - 1))
    if family in ("mdlm", "rev_udm_mdlm", "sedd_absorb"):
        k = rows - 1
    assert c["rows"] == rows and c["process_vocab_size"] == process.vocab_size == k
    assert c["mask_id"] == (rows - 1 if process.label == "MDM" else None)
    assert c["family"] == family.replace("_loo", "")
    assert model.prediction == {"rev_udm_udlm_loo": "loo", "rev_udm_audm": "posterior", "sedd_absorb": "score",
                                "sedd_uniform": "score"}.get(family, "denoiser")
    assert c["conditioning"]["zeroed"] == (family in ("mdlm", "rev_udm_mdlm"))
    assert c["conditioning"]["noise_tokens"] == ("separate_linear" if family == "rev_udm_audm" else None)
    assert c["tokenizer"]["family_tokenizer"] == ("bert-base-uncased" if family == "udlm" else "gpt2")
    if family.startswith("rev_udm") and process.label != "MDM":
        assert str(rows - 1) in c["special_rows"] and c["notes"]  # the unused MASK/[PAD] row and the K note
    if family.startswith("sedd"):
        assert c["scale_by_sigma"] == (family == "sedd_absorb")


def test_postprocess_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="postprocess kind must be one of"):
        postprocess("softmax", torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), torch.zeros(1))
    assert NEG_INFINITY == -1e6


@torch.no_grad()
def test_mdlm_repositorys_sedd_baseline_is_sedds_function(tmp_path):
    """MDLM's (and BD3-LM's) SEDD baselines are Lightning checkpoints of MDLM's code with
    parameterization "sedd". The MDLM fixture's weights equal the SEDD-absorb fixture's (same seeds,
    same layout), so such a checkpoint must give SEDD's own log-score on SEDD's inputs."""
    from _fixtures import ROOT

    from ddlm.pretrained.safe_unpickle import opaque_to_plain, read_torch_archive

    obj = read_torch_archive(ROOT / "mdlm" / "last.ckpt").obj
    cfg = opaque_to_plain(obj["hyper_parameters"]["config"])
    cfg.update(parameterization="sedd", time_conditioning=True)
    ckpt = tmp_path / "sedd-baseline.ckpt"
    torch.save({"state_dict": obj["state_dict"], "ema": obj["ema"], "hyper_parameters": {"config": cfg}}, ckpt)
    import ddlm

    model, process, _ = ddlm.load(ckpt)
    c = model.conventions
    assert c["family"] == "sedd_absorb" and c["format"] == "lightning" and c["scale_by_sigma"]
    assert model.prediction == "score" and process.label == "MDM" and process.vocab_size == 37
    d = io("sedd_absorb")
    for weights in ("ema", "raw"):
        model, _, _ = ddlm.load(ckpt, weights)
        assert_matches(model.family_output(d["x"], d["t"]), d[f"log_score.{weights}_weights"])
    cfg["diffusion"] = "uniform"
    torch.save({"state_dict": obj["state_dict"], "hyper_parameters": {"config": cfg}}, ckpt)
    with pytest.raises(ValueError, match="absorbing state only"):
        ddlm.load(ckpt)
