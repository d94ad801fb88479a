"""The NLL bound (ddlm.evaluate.bound) against the exact oracle and independent recounts."""

import json
import math

import pytest
import torch
from _eval_runs import TEXT, cli, run_cli, text_run

import ddlm
from ddlm import exact
from ddlm.data.corpora import pack
from ddlm.evaluate import bound
from ddlm.evaluate.bound import CallableModel, model_bound, nll_bound
from ddlm.processes import AbsorbingUniformDiffusion, MaskedDiffusion, UniformDiffusion

SCHEDULE = ddlm.LinearSchedule(eps=0.0)  # alpha_1 = 0: the ELBO has no prior term
CASES = [(MaskedDiffusion, "denoiser"), (UniformDiffusion, "loo"), (UniformDiffusion, "denoiser"),
         (AbsorbingUniformDiffusion, "posterior"), (MaskedDiffusion, "score"), (UniformDiffusion, "score")]


@pytest.fixture(scope="module")
def toy():
    law = exact.random_law(3, 3, seed=3, concentration=0.7)
    blocks = law.sample(512, generator=torch.Generator().manual_seed(0))
    return law, blocks, float(-law.p0[law.index(blocks)].log().mean()) / law.length


@pytest.mark.parametrize("cls,output", CASES, ids=[f"{c.__name__}-{o}" for c, o in CASES])
def test_bound_of_the_exact_model_is_minus_log_p0(toy, cls, output):
    """With the exact oracle the ELBO is tight: its Monte-Carlo estimate equals -log p_0 per token of
    the same blocks within 3 standard errors."""
    law, blocks, target = toy
    proc = cls(3, SCHEDULE)
    model = CallableModel(exact.model(law, proc, output), proc, output)
    r = model_bound(model, blocks, batch_size=64, num_batches=128, seed=1, t_min=0.0)
    assert r["estimator"] == "elbo" and r["num_batches"] == 128 and len(r["per_batch"]) == 128
    assert abs(r["nats_per_token"] - target) < 3 * r["se"], (r["nats_per_token"], target, r["se"])
    assert r["se"] < 0.05  # precise enough for the control below to fail
    assert r["perplexity"] == pytest.approx(math.exp(r["nats_per_token"]))


def test_a_wrong_model_is_detected(toy):
    """Control: the raw denoiser fed to the plug-in ELBO as if it were the LOO (a looser bound, by
    0.47 nats/token exactly) lies many standard errors above -log p_0."""
    law, blocks, target = toy
    proc = UniformDiffusion(3, SCHEDULE)
    wrong = CallableModel(exact.model(law, proc, "denoiser"), proc, "loo")
    r = model_bound(wrong, blocks, batch_size=64, num_batches=128, seed=1, t_min=0.0)
    assert r["nats_per_token"] > target + 4 * r["se"]


def test_seeds_and_defaults(toy):
    law, blocks, _ = toy
    proc = MaskedDiffusion(3, SCHEDULE)
    model = CallableModel(exact.model(law, proc), proc, "denoiser")
    a = model_bound(model, blocks, batch_size=64, seed=5)
    assert a == model_bound(model, blocks, batch_size=64, seed=5)
    assert a["per_batch"] != model_bound(model, blocks, batch_size=64, seed=6)["per_batch"]
    assert a["num_batches"] == 8 and a["scored_tokens"] == 512 * 3  # default: every block once
    with pytest.raises(ValueError, match="blocks must be a non-empty"):
        model_bound(model, torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"blocks holds token id 3, expected ids in \[0, 2\]"):
        model_bound(model, torch.full((2, 3), 3))


def test_autoregressive_bound_is_the_exact_nll(tmp_path):
    import dataclasses

    run = text_run(tmp_path, "ar")
    model, _, tok = ddlm.load(run)
    assert model.config.start_id == tok.bos_id and model.config.max_len == 17
    blocks = pack([tok.encode(TEXT)], 16, tok.bos_id, tok.eos_id)[:48]
    special = torch.tensor([tok.bos_id, tok.eos_id])
    r = model_bound(model, blocks, batch_size=8, num_batches=6, tokenizer=tok)  # every block exactly once
    with torch.no_grad():  # independent: the summed NLL of every block token given BOS + its prefix
        with_start = torch.cat([torch.full((48, 1), tok.bos_id), blocks], dim=1)
        nll = model.nll(with_start).sum().item() / (48 * 16)
    assert r["estimator"] == "exact_nll" and r["nats_per_token"] == pytest.approx(nll, rel=1e-5)
    assert r["scored_tokens"] == 48 * 16
    chars = int((~torch.isin(blocks, special)).sum())  # every block token's text (BOS/EOS decode to nothing)
    assert r["characters"] == chars
    assert r["bits_per_char"] == pytest.approx(nll * 48 * 16 / chars / math.log(2), rel=1e-5)
    # a run saved before block-start tokens: x[0] is context, x[1:] is scored
    model.config = dataclasses.replace(model.config, start_id=None)
    old = model_bound(model, blocks, batch_size=8, num_batches=6, tokenizer=tok)
    with torch.no_grad():
        nll = model.nll(blocks).sum().item() / (48 * 15)
    assert old["nats_per_token"] == pytest.approx(nll, rel=1e-5) and old["scored_tokens"] == 48 * 15
    assert old["characters"] == int((~torch.isin(blocks[:, 1:], special)).sum())


def test_run_bound_on_its_validation_split_and_on_a_corpus(tmp_path):
    run = text_run(tmp_path, "mdm")
    r = nll_bound(run, batch_size=4, seed=0)
    assert r["data"]["source"] == "validation split" and r["run"]["step"] == 3 and r["run"]["process"] == "mdm"
    from ddlm.data.corpora import split_documents

    _, val_docs = split_documents([TEXT], 0.05, seed=0)  # the run's split, rebuilt by hand
    n_val = (sum(len(d) for d in val_docs) + 2) // 16
    assert r["blocks"] == n_val > 0 and r["t_min"] == 1e-3
    assert r["num_batches"] == max(2, math.ceil(n_val / 4))
    three = nll_bound(run, batch_size=4, seed=0, passes=3)
    assert three["num_batches"] == max(2, 3 * math.ceil(n_val / 4)) and three["passes"] == 3
    assert three["per_batch"][: r["num_batches"]] == r["per_batch"]  # the first pass is the one-pass estimate
    with pytest.raises(ValueError, match="not both"):
        nll_bound(run, batch_size=4, passes=2, num_batches=3)
    with pytest.raises(ValueError, match="passes must be an integer >= 1"):
        nll_bound(run, batch_size=4, passes=0)
    # an explicit corpus: all of it, packed with the run's tokenizer
    corpus = tmp_path / "other.txt"
    corpus.write_text("a lazy dog. " * 30)
    c = nll_bound(run, data=str(corpus), batch_size=4)
    from ddlm.data.corpora import unigram_entropy

    tok = ddlm.load(run)[2]
    blocks = bound.corpus_blocks(corpus, tok, 16)[0]
    assert c["data"] == {"source": "corpus", "corpus": str(corpus), "documents": 1, "convention": "packed",
                         "block_size": 16, "split": "none (every document)", "unigram_entropy_of":
                         "evaluated corpus", "unigram_entropy": unigram_entropy(blocks, tok.vocab_size)}
    assert r["data"]["convention"] == "packed" and r["data"]["split"].startswith("val_fraction:")
    assert c["blocks"] == (len("a lazy dog. " * 30) + 2) // 16
    # bits per character: total nats over the characters of the scored blocks
    assert c["bits_per_char"] == pytest.approx(c["total_nats"] / c["characters"] / math.log(2))
    assert c["characters"] < c["scored_tokens"]  # BOS/EOS hold no character


def test_corpus_errors(tmp_path):
    run = text_run(tmp_path, "udm")
    (tmp_path / "blank.txt").write_text("  \n\n ")
    with pytest.raises(ValueError, match="empty corpus"):
        nll_bound(run, data=str(tmp_path / "blank.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty corpus: no \\*.txt file under folder"):
        nll_bound(run, data=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="corpus path not found"):
        nll_bound(run, data=str(tmp_path / "nope.txt"))
    (tmp_path / "greek.txt").write_text("the dog " * 10 + "\nthe λ")
    with pytest.raises(ValueError, match="document 0: the character at offset 85 \\(line 2, column 5\\) is not in "
                                         "the vocabulary of the run's tokenizer") as info:
        nll_bound(run, data=str(tmp_path / "greek.txt"))
    assert "λ" not in str(info.value)  # error messages never quote a file's content
    (tmp_path / "short.txt").write_text("dog")
    with pytest.raises(ValueError, match="fewer than one block of 16"):
        nll_bound(run, data=str(tmp_path / "short.txt"))
    (tmp_path / "corpus.txt").unlink()  # the run's own corpus is gone: say how to go on
    with pytest.raises(FileNotFoundError, match="cannot rebuild the validation split .* pass --data"):
        nll_bound(run)


def test_missing_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"run folder '{tmp_path / 'nope'}' does not exist"):
        nll_bound(tmp_path / "nope")
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        nll_bound(tmp_path / "bare")


def test_eval_command_writes_a_record_that_remakes_the_number(tmp_path, capsys):
    run = text_run(tmp_path, "audm")
    parser = cli(bound)
    out = tmp_path / "res" / "eval.json"
    assert run_cli(parser, ["eval", run, "--batches", "3", "--batch-size", "4", "--seed", "2", "--out", out,
                            "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    rec = json.loads(out.read_text())
    # the bound in nats/token and per character, what it was measured on, and the unigram entropy beside it
    assert printed[0].startswith(f"NLL bound: {rec['nats_per_token']:.4f} +- {rec['se']:.4f} nats/token = ")
    assert "nats/char" in printed[0] and f"{rec['bits_per_char']:.4f} bits/char" in printed[0]
    assert printed[1].startswith("measured on the validation split of corpus ")
    trained = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["data"]["unigram_entropy"] == pytest.approx(trained["unigram_entropy"], abs=1e-12)  # training's
    assert printed[2].startswith(f"unigram entropy of the training split: {trained['unigram_entropy']:.4f} nats/token")
    assert rec["command"] == "eval" and rec["num_batches"] == 3 and rec["batch_size"] == 4 and rec["seed"] == 2
    assert rec["run"]["checkpoint"].endswith("step_000003") and rec["run"]["ddlm_version"] == ddlm.__version__
    again = nll_bound(rec["run"]["checkpoint"], None, num_batches=rec["num_batches"], batch_size=rec["batch_size"],
                      seed=rec["seed"])
    assert again["nats_per_token"] == rec["nats_per_token"] and again["per_batch"] == rec["per_batch"]
    with pytest.raises(FileExistsError, match=f"result file '{out}' already exists"):
        run_cli(parser, ["eval", run, "--out", out])
    assert run_cli(parser, ["eval", run, "--batches", "2", "--out", out, "--overwrite", "--no-progress"]) == 0
    assert json.loads(out.read_text())["num_batches"] == 2


# ---- released checkpoints (tests/fixtures/pretrained) -------------------------------------------

@pytest.mark.filterwarnings("ignore::ddlm.pretrained.SkippedObjectsWarning")
def test_eval_of_a_released_checkpoint_is_the_family_bound(tmp_path):
    """MDLM's own loss per token is -log p_SUBS(x0) dsigma/expm1(sigma) = -log p(x0) (1 - eps)/(1 - alpha_t)
    on masked tokens: ddlm's bound of the imported model is that, on the same draws."""
    from _pretrained import CORPUS, MDLM

    from ddlm.bound import corrupt, stratified_times, token_losses
    from ddlm.evaluate.results import load_run

    run = load_run(MDLM)
    blocks, _ = bound.corpus_blocks(CORPUS, run.tokenizer, run.block_size)
    x0 = blocks[:8]
    g = torch.Generator().manual_seed(0)
    t = stratified_times(0.3, torch.arange(8), 8, run.t_min)
    xt, _ = corrupt(run.process, x0, t, g)
    with torch.no_grad():
        ours = token_losses(run.model, run.process.elbo, x0, xt, None, t)
        subs = run.model.family_output(xt, t)  # MDLM's own forward (all 38 rows)
    alpha = 1 - (1 - 1e-3) * t.double()
    mdlm = -subs.double().gather(-1, x0[..., None]).squeeze(-1) * ((1 - 1e-3) / (1 - alpha))[:, None]
    mdlm = torch.where(xt == 37, mdlm, torch.zeros_like(mdlm))
    torch.testing.assert_close(ours.double(), mdlm, atol=1e-4, rtol=1e-5)
    assert (xt == 37).any() and ours.sum() > 0
    # the command: --data is required, the record states the convention
    parser = cli(bound)
    with pytest.raises(ValueError, match="pass --data PATH"):
        run_cli(parser, ["eval", MDLM, "--no-progress"])
    out = tmp_path / "b.json"
    assert run_cli(parser, ["eval", MDLM, "--data", CORPUS, "--batch-size", "4", "--out", out, "--no-progress"]) == 0
    rec = json.loads(out.read_text())
    conv = rec["bound_convention"]
    assert conv["objective"] == "mdm_elbo" and conv["process_vocab_size"] == 37 and conv["t_range"] == [1e-3, 1.0]
    assert rec["t_min"] == 1e-3 and rec["run"]["imported"]["family"] == "mdlm" and rec["batch_size"] == 4
    direct = model_bound(run.model, blocks, batch_size=4, seed=0, t_min=1e-3, tokenizer=run.tokenizer)
    assert rec["nats_per_token"] == pytest.approx(direct["nats_per_token"], rel=1e-12)


@pytest.mark.filterwarnings("ignore::ddlm.pretrained.SkippedObjectsWarning")
def test_eval_of_uniform_audm_and_score_checkpoints(tmp_path):
    from _pretrained import AUDM, CORPUS, GPT2_LIKE, GPT2_LIKE_37, SEDD_UNIFORM, UDM_LOO

    parser = cli(bound)
    for path, tok, objective, scored in ((UDM_LOO, GPT2_LIKE, "udm_elbo", "loo"),
                                         (AUDM, GPT2_LIKE, "audm_elbo", "posterior"),
                                         (SEDD_UNIFORM, GPT2_LIKE_37, "score_entropy", "score")):
        out = tmp_path / f"{path.parent.name}.json"
        assert run_cli(parser, ["eval", path, "--data", CORPUS, "--tokenizer", tok, "--batches", "2", "--out", out,
                                "--no-progress"]) == 0
        rec = json.loads(out.read_text())
        conv = rec["bound_convention"]
        assert conv["objective"] == objective and conv["prediction_scored"] == scored
        assert conv["process_vocab_size"] == 37
        assert math.isfinite(rec["nats_per_token"]) and rec["nats_per_token"] > 0
        if path == SEDD_UNIFORM:
            assert "score entropy" in conv["note"]
        if path == UDM_LOO:
            assert "extra row 37 is dropped" in conv["note"]
