"""``ddlm sample`` (ddlm.evaluate.generate) and the result records (ddlm.evaluate.results)."""

import json

import pytest
import torch
from _eval_runs import cli, run_cli, text_run

import ddlm
from ddlm.evaluate import generate
from ddlm.evaluate.generate import condition_tokens, parse_infill
from ddlm.evaluate.options import SamplerSettings, draw
from ddlm.evaluate.results import load_run, run_info, write_json, write_jsonl


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    return {p: text_run(root, p) for p in ("mdm", "udm", "ar")}


def test_parse_infill_and_condition_tokens():
    assert parse_infill("ab[[3]]c[[1]]") == ["ab", 3, "c", 1]
    assert parse_infill("[[2]]xy") == [2, "xy"]
    with pytest.raises(ValueError, match="has no gap"):
        parse_infill("no gap here")
    with pytest.raises(ValueError, match=r"gap \[\[0\]\] must hold at least 1 token"):
        parse_infill("a[[0]]b")
    tok = ddlm.data.tokenizers.CharTokenizer("abc ")
    p, m = condition_tokens(tok, 8, prompt="ab")
    assert p[:3].tolist() == [tok.bos_id] + tok.encode("ab") and m.tolist() == [True] * 3 + [False] * 5
    p, m = condition_tokens(tok, 8, infill="a[[2]]bc", bos=False)
    assert m.tolist() == [True, False, False, True, True, False, False, False]
    assert p[m].tolist() == tok.encode("abc")
    with pytest.raises(ValueError, match="too many for samples of length 3"):
        condition_tokens(tok, 3, prompt="abcc")
    with pytest.raises(ValueError, match="nothing left to generate"):
        condition_tokens(tok, 3, prompt="ab")
    with pytest.raises(ValueError, match="character 'z'"):
        condition_tokens(tok, 8, prompt="z")
    assert condition_tokens(tok, 8) == (None, None)


def test_sample_command_prints_and_writes_every_setting(runs, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    argv = ["sample", runs["mdm"], "--nfe", "8", "--num-samples", "3", "--temperature", "0.9", "--seed", "4",
            "--prompt", "the quick", "lazy", "--out", out, "--batch-size", "2", "--no-progress"]
    assert run_cli(cli(generate), argv) == 0
    printed = capsys.readouterr().out
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 6 and [r["index"] for r in recs] == list(range(6))
    loaded = load_run(runs["mdm"])
    tok = loaded.tokenizer
    for r in recs:
        prompt = "the quick" if r["condition"] == 0 else "lazy"
        head = [tok.bos_id] + tok.encode(prompt)
        assert r["prompt"] == prompt and r["ids"][: len(head)] == head  # the prompt was held at the start
        assert r["text"] == tok.decode(r["ids"]) and r["text"].startswith(prompt) and r["text"] in printed
        assert r["completion"] == tok.decode(r["ids"][len(head):])
        s = r["settings"]
        assert s["sampler"] == SamplerSettings(nfe=8, temperature=0.9, seed=4).to_dict()
        assert s["run"]["step"] == 3 and s["run"]["checkpoint"].endswith("step_000003")
        assert s["run"]["process"] == "mdm" and s["run"]["model_output"] == "denoiser"
        assert s["length"] == 16 and s["batch_size"] == 2 and s["bos"] is True and s["prompt"] == prompt
        assert s["ddlm_version"] == ddlm.__version__ and s["resolved_sampler"] == "ancestral"
    # the record is enough to remake the samples
    s = recs[0]["settings"]
    again = load_run(s["run"]["checkpoint"])
    p, m = condition_tokens(again.tokenizer, s["length"], prompt=s["prompt"], bos=s["bos"])
    x = draw(again.model, again.process, again.tokenizer, SamplerSettings.from_dict(s["sampler"]), s["num_samples"],
             s["length"], prompt=p, prompt_mask=m, batch_size=s["batch_size"])
    assert x.tolist() == [r["ids"] for r in recs[:3]]
    # never overwrites a result unless asked
    with pytest.raises(FileExistsError, match=f"result file '{out}' already exists"):
        run_cli(cli(generate), ["sample", runs["mdm"], "--nfe", "2", "--out", out])
    assert run_cli(cli(generate), ["sample", runs["mdm"], "--nfe", "2", "--num-samples", "1", "--out", out,
                                   "--overwrite", "--no-progress"]) == 0
    assert len(out.read_text().splitlines()) == 1


def test_infilling_keeps_the_text_around_the_gaps(runs, tmp_path):
    loaded = load_run(runs["udm"])
    recs = generate.generate_samples(loaded, SamplerSettings(nfe=6, corrector={"sweeps": 1, "k": 2}),
                                     num_samples=4, infills=["the[[3]]fox[[2]]dog"])
    tok = loaded.tokenizer
    for r in recs:
        ids = r["ids"]
        assert ids[0] == tok.bos_id and ids[1:4] == tok.encode("the")  # then 3 free, "fox", 2 free, "dog", 1 free
        assert ids[7:10] == tok.encode("fox") and ids[12:15] == tok.encode("dog")
        assert r["infill"] == "the[[3]]fox[[2]]dog" and r["completion"] is None
        assert r["settings"]["sampler"]["corrector"]["k"] == 2


def test_prompt_file_and_unconditional(runs, tmp_path, capsys):
    f = tmp_path / "prompts.txt"
    f.write_text("the\n\nfox\n")
    out = tmp_path / "p.jsonl"
    assert run_cli(cli(generate), ["sample", runs["udm"], "--nfe", "4", "--num-samples", "1", "--prompt-file", f,
                                   "--out", out, "--no-progress", "--length", "10"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in recs] == ["the", "fox"] and all(len(r["ids"]) == 10 for r in recs)
    loaded = load_run(runs["udm"])
    recs = generate.generate_samples(loaded, SamplerSettings(nfe=4), num_samples=2)
    assert [r["prompt"] for r in recs] == [None, None] and recs[0]["condition"] is None
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="holds no prompt"):
        run_cli(cli(generate), ["sample", runs["udm"], "--prompt-file", tmp_path / "blank.txt"])
    with pytest.raises(FileNotFoundError, match="prompt file .* does not exist"):
        run_cli(cli(generate), ["sample", runs["udm"], "--prompt-file", tmp_path / "none.txt"])


def test_autoregressive_sampling(runs):
    parser = cli(generate)
    loaded = load_run(runs["ar"])
    recs = generate.generate_samples(loaded, SamplerSettings(top_p=0.9), num_samples=2, prompts=["the"])
    tok = loaded.tokenizer
    assert all(r["ids"][:4] == [tok.bos_id] + tok.encode("the") for r in recs)
    with pytest.raises(ValueError, match="prefix prompts only"):
        generate.generate_samples(loaded, SamplerSettings(), num_samples=1, infills=["a[[2]]b"])
    with pytest.raises(ValueError, match="option --nfe does not apply to an autoregressive run"):
        run_cli(parser, ["sample", runs["ar"], "--nfe", "8"])
    with pytest.raises(ValueError, match="option corrector="):
        run_cli(parser, ["sample", runs["ar"], "--corrector-sweeps", "1"])


def test_option_errors_reach_the_user(runs):
    parser = cli(generate)
    with pytest.raises(ValueError, match="option remasking applies to no UDM sampler"):
        run_cli(parser, ["sample", runs["udm"], "--remasking", "cap"])
    with pytest.raises(ValueError, match="option corrector GibbsCorrector supports uniform diffusion only"):
        run_cli(parser, ["sample", runs["mdm"], "--corrector-sweeps", "1"])
    with pytest.raises(ValueError, match=r"length must be an integer in \[1, 16\]"):
        run_cli(parser, ["sample", runs["mdm"], "--length", "17"])
    with pytest.raises(SystemExit):  # argparse: prompt and infill are exclusive
        run_cli(parser, ["sample", runs["mdm"], "--prompt", "a", "--infill", "a[[1]]"])
    # remasking selects the ReMDM sampler for MDM
    recs = generate.generate_samples(load_run(runs["mdm"]), SamplerSettings(nfe=4, remasking={"kind": "rescale"}),
                                     num_samples=1)
    assert recs[0]["settings"]["resolved_sampler"] == "remdm"


def test_missing_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"run folder '{tmp_path / 'nope'}' does not exist"):
        run_cli(cli(generate), ["sample", tmp_path / "nope"])
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        run_cli(cli(generate), ["sample", tmp_path / "empty"])


def test_run_info_and_the_reference_checkpoint():
    from importlib import resources

    ref = resources.files("ddlm") / "reference" / "demo-mdm"
    info = run_info(ref)
    assert info["checkpoint"] == str(ref) and info["process"] == "mdm" and info["step"] > 0
    loaded = load_run(ref)
    recs = generate.generate_samples(loaded, SamplerSettings(nfe=4), num_samples=1, prompts=["ROMEO:"], length=24)
    assert recs[0]["text"].startswith("ROMEO:")


def test_result_files_are_atomic_and_never_clobbered(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"a": 1, "t": torch.tensor([1.5])})
    assert json.loads(path.read_text()) == {"a": 1, "t": [1.5]}
    with pytest.raises(FileExistsError, match=f"result file '{path}' already exists"):
        write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1, "t": [1.5]}
    write_json(path, {"a": 3}, overwrite=True)
    assert json.loads(path.read_text()) == {"a": 3}
    with pytest.raises(ValueError, match=r"record value at record.x\[1\] is nan"):
        write_json(tmp_path / "nan.json", {"x": [1.0, float("nan")]})
    assert not (tmp_path / "nan.json").exists()
    write_jsonl(tmp_path / "r.jsonl", [{"i": 0}, {"i": 1}])
    assert (tmp_path / "r.jsonl").read_text() == '{"i": 0}\n{"i": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.jsonl"]  # no temporary file left


# ---- released checkpoints (tests/fixtures/pretrained) -------------------------------------------

@pytest.mark.filterwarnings("ignore::ddlm.pretrained.SkippedObjectsWarning")
def test_sample_command_on_released_checkpoints(tmp_path, capsys):
    from _pretrained import AUDM, GPT2_LIKE, MDLM

    parser = cli(generate)
    out = tmp_path / "mdlm.jsonl"
    assert run_cli(parser, ["sample", MDLM, "--num-samples", "2", "--nfe", "6", "--seed", "3", "--infill",
                            "t1 [[4]] t2", "--out", out, "--no-progress"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 2 and all(r["ids"][1] == 1 and r["ids"][6] == 2 for r in recs)
    settings = recs[0]["settings"]
    assert settings["process"] == "mdm" and settings["run"]["imported"]["family"] == "mdlm"
    assert settings["run"]["weights"] == "ema" and settings["run"]["config"] is None
    # --weights raw samples the raw weights (the fixtures' raw and EMA weights are far apart)
    raw = tmp_path / "raw.jsonl"
    assert run_cli(parser, ["sample", MDLM, "--num-samples", "2", "--nfe", "6", "--seed", "3", "--weights", "raw",
                            "--out", raw, "--no-progress"]) == 0
    ema = tmp_path / "ema.jsonl"
    assert run_cli(parser, ["sample", MDLM, "--num-samples", "2", "--nfe", "6", "--seed", "3", "--out", ema,
                            "--no-progress"]) == 0
    ids = [[json.loads(line)["ids"] for line in f.read_text().splitlines()] for f in (raw, ema)]
    assert ids[0] != ids[1]
    assert json.loads(raw.read_text().splitlines()[0])["settings"]["run"]["imported"]["weights"] == "raw"
    # the paper's AUDM model needs a tokenizer (its checkpoint carries none); prompts stay fixed
    with pytest.raises(ValueError, match="--tokenizer"):
        run_cli(parser, ["sample", AUDM, "--no-progress"])
    assert run_cli(parser, ["sample", AUDM, "--tokenizer", GPT2_LIKE, "--num-samples", "2", "--nfe", "4",
                            "--prompt", "t7 t8", "--sampler", "reaudm", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("--- sample") == 8 and "t7 t8" in printed
