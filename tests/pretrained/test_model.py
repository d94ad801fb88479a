"""Imported models as ddlm models: every applicable sampler runs on them and is seeded (prompts,
infilling, the informed predictor-corrector and temperature on the LOO for the uniform models, SEDD's
score models included), and bfloat16 autocast runs."""

import pytest
import torch
from _fixtures import FILES, io, load

import ddlm
from ddlm import conversions
from ddlm.sampling.registry import samplers

FAMILIES = list(FILES)


def _first(family):
    return "hf" if family.startswith("sedd") else FILES[family][0]


def _draw(view, process, seed, **kw):
    g = torch.Generator().manual_seed(seed)
    return ddlm.sample(view, process, 3, 10, 4, generator=g, **kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_sampler_runs_and_is_seeded(family):
    model, process, _ = load(family, _first(family))
    view = model  # an imported model is a ddlm model: nothing to wrap
    prompt = torch.tensor([5, 6, 7] + [0] * 4 + [9] + [0] * 2).expand(3, -1)
    mask = torch.tensor([True, True, True] + [False] * 4 + [True] + [False] * 2).expand(3, -1)  # prefix + 1 token
    names = samplers(process)
    assert names
    for name in names:
        a = _draw(view, process, 0, sampler=name)
        assert torch.equal(a, _draw(view, process, 0, sampler=name)), name
        assert a.shape == (3, 10) and int(a.min()) >= 0 and int(a.max()) < process.vocab_size
        if not process.kernels[name].greedy or process.label != "MDM":  # MDM's greedy kernel from all-masks is fixed
            assert not torch.equal(a, _draw(view, process, 1, sampler=name)), name
        c = _draw(view, process, 2, sampler=name, prompt=prompt, prompt_mask=mask)
        assert torch.equal(c[mask], prompt[mask]), name
    if process.label == "UDM":  # the paper's second claim: informed PC and temperature on the LOO
        kw = dict(corrector=ddlm.GibbsCorrector(sweeps=1, k=2, selection="lowest_log_margin"), temperature=0.8,
                  temperature_on="loo")  # the LOO: SEDD's uniform score converted by the process
        a = _draw(view, process, 0, **kw)
        assert torch.equal(a, _draw(view, process, 0, **kw))
        assert not torch.equal(a, _draw(view, process, 0))  # the options change the draw


@torch.no_grad()
def test_score_models_are_read_through_the_process():
    """SEDD's log-score is a "score" output ddlm's processes convert themselves: the uniform graph's LOO
    is ``conversions.score_to_loo`` of it, the absorbing graph's denoiser its normalised scores."""
    for family, target in (("sedd_uniform", "loo"), ("sedd_absorb", "denoiser")):
        model, process, _ = load(family, "hf")
        assert model.prediction == "score" and process.view("score") == "score"
        assert process.bound_objective(model.prediction) == "score_entropy"
        d = io(family)
        x, t = d["x"], d["t"]
        score = model(x, t).double()
        assert score.shape == (3, 16, process.vocab_size)  # the log-score over the K tokens
        alpha = process.alpha(t.double()).unsqueeze(-1)
        got = process.convert_view(score, x, alpha, "score", target)
        if target == "loo":
            torch.testing.assert_close(got, conversions.score_to_loo(score, x, alpha), atol=1e-9, rtol=0)
        else:
            masked = x == process.vocab_size
            torch.testing.assert_close(got[masked], torch.log_softmax(score[masked], -1), atol=1e-9, rtol=0)


def test_time_as_a_float_and_as_a_vector_agree():
    model, _, _ = load("duo", "last.ckpt")
    x = io("duo")["x"]
    with torch.no_grad():
        assert torch.equal(model(x, 0.5), model(x, torch.full((3,), 0.5)))


def test_bfloat16_autocast():
    d = io("udlm")
    f32, _, _ = load("udlm", "hf")
    bf16, _, _ = load("udlm", "hf", dtype="bfloat16")
    with torch.no_grad():
        a, b = f32.raw(d["x"], d["t"]), bf16.raw(d["x"], d["t"])
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    assert (a - b).abs().max() < 0.1 * a.abs().max()  # bfloat16 rounding, not a different function
    with pytest.raises(ValueError, match="dtype must be one of"):
        load("udlm", "hf", dtype="float16")


def test_tokenizers():
    from _fixtures import GPT2_LIKE

    _, _, tok = load("mdlm", "last.ckpt")  # read as data from the pickled tokenizer
    assert tok.encode("t1 t2 t35") == [1, 2, 35] and tok.bos_id == tok.eos_id == 36
    _, _, tok = load("udlm", "last.ckpt")  # BERT-like: [CLS]/[SEP] as BOS/EOS
    assert tok.bos_id == 2 and tok.eos_id == 3 and tok.encode("w0 w1") == [5, 6]
    model, _, tok = load("rev_udm_audm", "last.ckpt")  # rev_udm does not pickle its tokenizer
    assert tok is None and "pass tokenizer=" in model.conventions["tokenizer"]["source"]
    _, _, tok = load("rev_udm_audm", "last.ckpt", tokenizer=GPT2_LIKE)
    assert tok.encode("t3") == [3]
    with pytest.raises(ValueError, match="apply to imported checkpoints"):
        ddlm.load(__import__("ddlm").__path__[0] + "/reference/demo-mdm", tokenizer=GPT2_LIKE)
