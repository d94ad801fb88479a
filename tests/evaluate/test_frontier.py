import argparse
import csv
import json
import math

import pytest

from ddlm.config import load_config
from ddlm.evaluate import frontier as F
from ddlm.evaluate.metrics import sample_entropy
from ddlm.evaluate.options import SamplerSettings
from ddlm.evaluate.results import load_run
from ddlm.train import train

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "\n\n") * 3


class LetterJudge:
    """A judge with a known answer: each character costs -log p(char) under a fixed unigram law
    (1/2 for 'e', the rest shared), so gen-PPL = exp(total / count) can be recomputed by hand."""

    name = "letter-judge"

    def __init__(self):
        self.calls = 0

    @staticmethod
    def nll(ch: str) -> float:
        return math.log(2) if ch == "e" else math.log(200)

    def features(self, texts, batch_size=8, progress=False):
        import torch

        return torch.tensor([[t.count(c) / max(1, len(t)) for c in "etaoinshrdlu .\n"] for t in texts])

    def gen_ppl(self, texts):
        self.calls += 1
        total = sum(self.nll(c) for t in texts for c in t)
        n = sum(len(t) for t in texts)
        return {"gen_ppl": math.exp(total / n), "mean_nll": total / n, "mean_nll_se": 0.125, "num_tokens": n,
                "num_texts": len(texts),
                "num_empty": sum(1 for t in texts if not t), "judge": self.name}


def _run(tmp_path, name, process):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    cfg = load_config(None, [f"run_dir={tmp_path / name}", f"data.corpus={corpus}", "data.block_size=16",
                             "model.hidden=32", "model.blocks=1", "model.heads=2", "batch_size=8", "max_steps=2",
                             "eval_every=2", "save_every=2", "eval_batches=1", "optim.warmup_steps=1",
                             f"process={process}", "sample_every=0"])
    train(cfg, progress=False, log=lambda *_: None)
    return load_run(tmp_path / name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("frontier")
    return {p: _run(tmp, p, p) for p in ("mdm", "udm", "ar")}


def test_points_record_the_judge_and_entropy_of_their_own_samples(runs, tmp_path):
    judge = LetterJudge()
    points = F.grid([None], [4, 8], [0.8, 1.0], [1.0], SamplerSettings(seed=3))
    rows = F.sweep([runs["mdm"]], points, judge, tmp_path, num_samples=5, batch_size=3, progress=False,
                   log=lambda *_: None)
    assert len(rows) == 4 and judge.calls == 4
    tok = runs["mdm"].tokenizer
    for row in rows:
        texts = [json.loads(line)["text"] for line in open(tmp_path / row["samples_file"])]
        assert len(texts) == 5
        # gen-PPL and entropy are those of the stored samples, recomputed independently
        assert float(row["gen_ppl"]) == pytest.approx(judge.gen_ppl(texts)["gen_ppl"], rel=1e-12)
        ids = [tok.encode(t) for t in texts if t]  # the content the judge saw, char level: one id per char
        assert float(row["entropy"]) == pytest.approx(sample_entropy(ids)["mean_entropy"], abs=1e-9)
        assert float(row["entropy_se"]) == pytest.approx(sample_entropy(ids)["entropy_se"], abs=1e-9)
        assert row["judge"] == "letter-judge" and row["process"] == "mdm" and row["sampler"] == "ancestral"
        assert float(row["mean_nll_se"]) == 0.125
        assert int(row["num_samples"]) == 5 and row["seed"] == "3"
    assert {(r["nfe"], r["temperature"]) for r in rows} == {("4", "0.8"), ("4", "1.0"), ("8", "0.8"), ("8", "1.0")}


def test_an_interrupted_sweep_resumes_without_redoing_points(runs, tmp_path):
    judge = LetterJudge()
    points = F.grid([None], [4], [0.7, 0.9, 1.1], [1.0], SamplerSettings())
    F.sweep([runs["udm"]], points[:2], judge, tmp_path, num_samples=3, progress=False, log=lambda *_: None)
    first = F.read_rows(tmp_path / F.CSV_NAME)
    rows = F.sweep([runs["udm"]], points, judge, tmp_path, num_samples=3, progress=False, log=lambda *_: None)
    assert judge.calls == 3 and len(rows) == 3
    assert rows[:2] == first  # finished points untouched
    # same settings again: nothing to do
    F.sweep([runs["udm"]], points, judge, tmp_path, num_samples=3, progress=False, log=lambda *_: None)
    assert judge.calls == 3
    # a changed setting (number of samples) is a new point
    F.sweep([runs["udm"]], points[:1], judge, tmp_path, num_samples=4, progress=False, log=lambda *_: None)
    assert judge.calls == 4


def test_autoregressive_runs_get_one_point_per_temperature(runs, tmp_path):
    judge = LetterJudge()
    points = F.grid([None], [4, 16], [0.8, 1.0], [1.0], SamplerSettings())
    rows = F.sweep([runs["ar"], runs["mdm"]], points, judge, tmp_path, num_samples=2, labels=["ar", "mdm"],
                   progress=False, log=lambda *_: None)
    ar = [r for r in rows if r["label"] == "ar"]
    assert len(ar) == 2 and all(r["nfe"] == "" for r in ar)
    assert len([r for r in rows if r["label"] == "mdm"]) == 4


def test_a_csv_without_entropy_se_is_read_and_upgraded_on_append(runs, tmp_path):
    judge = LetterJudge()
    points = F.grid([None], [4], [0.8, 1.0], [1.0], SamplerSettings())
    F.sweep([runs["mdm"]], points[:1], judge, tmp_path, num_samples=3, progress=False, log=lambda *_: None)
    path = tmp_path / F.CSV_NAME
    (row,) = F.read_rows(path)
    old = [{k: v for k, v in row.items() if k != "entropy_se"}]  # as a CSV of the previous version held it
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=F.OLD_FIELDS)
        writer.writeheader()
        writer.writerows(old)
    assert F.read_rows(path) == [dict(row, entropy_se="")]
    rows = F.sweep([runs["mdm"]], points, judge, tmp_path, num_samples=3, progress=False, log=lambda *_: None)
    assert judge.calls == 2  # the old point is kept, not redrawn
    assert path.read_text().splitlines()[0] == ",".join(F.FIELDS)
    assert rows[0] == dict(row, entropy_se="") and rows[1]["entropy_se"] != ""


def test_a_foreign_csv_is_refused(tmp_path):
    (tmp_path / F.CSV_NAME).write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="has columns"):
        F.read_rows(tmp_path / F.CSV_NAME)


def test_command_rejects_inapplicable_options_before_sampling(runs, tmp_path, monkeypatch, capsys):
    from ddlm.evaluate import judge_loading as judge_module

    monkeypatch.setattr(judge_module, "load_judge", lambda spec, device="cpu", progress=True: LetterJudge())
    parser = argparse.ArgumentParser()
    F.add_command(parser.add_subparsers())
    args = parser.parse_args(["frontier", runs["mdm"].info["run"], "--out", str(tmp_path / "o"), "--nfe", "4",
                              "--corrector-sweeps", "1"])
    with pytest.raises(ValueError, match="corrector"):
        args.func(args)
    assert not (tmp_path / "o" / F.CSV_NAME).exists()
    args = parser.parse_args(["frontier", runs["mdm"].info["run"], "--out", str(tmp_path / "o"), "--nfe", "4",
                              "--temperature", "0.9", "1.0", "--num-samples", "2", "--no-progress"])
    capsys.readouterr()
    assert args.func(args) == 0
    printed = capsys.readouterr()
    assert "frontier table (2 points" in printed.out and F.TABLE_HEADER in printed.out
    assert "%|" not in printed.err  # --no-progress: no bar
    with open(tmp_path / "o" / F.CSV_NAME) as f:
        assert len(list(csv.DictReader(f))) == 2
    png = tmp_path / "o" / F.PLOT_NAME
    assert png.stat().st_size > 0
    stamp = png.stat().st_mtime_ns
    assert args.func(args) == 0 and png.stat().st_mtime_ns == stamp  # nothing new: the plot is not redrawn
    args = parser.parse_args(["frontier", "--out", str(tmp_path / "o"), "--plot-only"])
    assert args.func(args) == 0 and png.stat().st_mtime_ns != stamp


def test_mauve_column_compares_samples_with_held_out_blocks(runs, tmp_path):
    from ddlm.evaluate.bound import run_blocks

    run = runs["mdm"]
    reference = F.held_out_texts(run, 16, 16, seed=0)
    val = {run.tokenizer.decode(b) for b in run_blocks(run, None)[0].tolist()}
    assert len(reference) == 16 and set(reference) <= val
    rows = F.sweep([run], F.grid([None], [4], [1.0], [1.0], SamplerSettings()), LetterJudge(), tmp_path,
                   num_samples=16, mauve=True, progress=False, log=lambda *_: None)
    assert rows[0]["mauve_reference"] == "validation" and 0.0 < float(rows[0]["mauve"]) <= 1.0
    with pytest.raises(ValueError, match="held-out blocks"):
        F.held_out_texts(run, 10**6, 16)


def test_sample_files_have_readable_unique_names_and_old_names_still_read(runs, tmp_path):
    judge = LetterJudge()
    points = F.grid([None], [4], [0.8], [1.0], SamplerSettings(seed=2))
    lines = []
    rows = F.sweep([runs["mdm"]], points, judge, tmp_path, num_samples=3, labels=["my run"], progress=False,
                   log=lines.append)
    name = rows[0]["samples_file"]
    assert name.startswith("samples/my_run-ancestral-nfe4-T0.8-p1-seed2-") and name.endswith(".jsonl")
    # another setting that is not in the readable part (the number of samples) gets another file
    more = F.sweep([runs["mdm"]], points, judge, tmp_path, num_samples=4, labels=["my run"], progress=False,
                   log=lines.append)
    assert len({r["samples_file"] for r in more}) == 2
    assert all((tmp_path / r["samples_file"]).is_file() for r in more)
    # each point was printed as a table line when scored
    assert sum(line.startswith("my run ") and "letter-judge" in line for line in lines) == 2
    assert F.TABLE_HEADER in lines
    # a folder made when files were named by a hash alone: its rows name their files, which still read
    old = tmp_path / "samples" / "0b79fcf6174dbb12.jsonl"
    (tmp_path / rows[0]["samples_file"]).rename(old)
    csv_text = (tmp_path / F.CSV_NAME).read_text().replace(rows[0]["samples_file"], "samples/0b79fcf6174dbb12.jsonl")
    (tmp_path / F.CSV_NAME).write_text(csv_text)
    first = F.read_rows(tmp_path / F.CSV_NAME)[0]
    assert [json.loads(line)["text"] for line in open(tmp_path / first["samples_file"])]


def test_table_has_one_line_per_point():
    row = {"label": "demo-mdm", "sampler": "ancestral", "nfe": "64", "temperature": "0.8", "top_p": "1.0",
           "gen_ppl": "123.456", "mean_nll_se": "0.01", "entropy": "4.2", "mauve": "", "seconds": "12.3",
           "judge": "smollm2"}
    table = F.format_table([row, dict(row, nfe="", sampler="ancestral", label="ar", mauve="0.5")]).splitlines()
    assert table[0] == F.TABLE_HEADER and len(table) == 3
    assert table[1].split() == ["demo-mdm", "ancestral", "64", "0.8", "1", "123.46", "x1.010", "4.200", "-", "12",
                                "smollm2"]
    assert table[2].split()[2] == "-" and "0.500" in table[2]


@pytest.mark.filterwarnings("ignore::ddlm.pretrained.SkippedObjectsWarning")
def test_frontier_of_a_released_checkpoint(tmp_path):
    from _pretrained import GPT2_LIKE, UDM_LOO

    run = load_run(UDM_LOO, tokenizer=GPT2_LIKE)
    judge = LetterJudge()
    points = F.grid([None], [4], [0.8, 1.0], [1.0], SamplerSettings(seed=1, temperature_on="loo"))
    rows = F.sweep([run], points, judge, tmp_path, num_samples=3, batch_size=3, progress=False, log=lambda *_: None)
    assert len(rows) == 2 and {r["temperature"] for r in rows} == {"0.8", "1.0"}
    assert all(r["process"] == "udm" and r["checkpoint"] == str(UDM_LOO) and r["label"] == "last.ckpt" for r in rows)
    with pytest.raises(ValueError, match="pass --data PATH"):
        F.held_out_texts(run, 2, 16)  # MAUVE's held-out text needs a validation split
