import pytest

from ddlm import demo
from ddlm.cli import main


def test_demo_numbers_are_the_maths():
    lines = []
    res = demo.run(vocab_size=2, length=3, seed=1, out=lines.append, progress=False)
    h = res["entropy"]
    assert res["conversion_error"] < 1e-12
    assert res["UDM plug-in ELBO, fed the LOO"] == pytest.approx(h, abs=1e-6)
    assert res["MDM ELBO, denoiser"] == pytest.approx(h, abs=1e-6)
    assert res["AUDM ELBO, posterior"] == pytest.approx(h, abs=1e-6)
    assert res["UDM plug-in ELBO, fed the denoiser"] > h + 0.01
    s = res["sampling"]
    assert s["UDM ancestral (bridge, LOO)"][-1] < s["floor"] + 0.02
    assert s["ablation: bridge fed the denoiser"][-1] > s["floor"] + 0.05
    assert any("Exact NLL bounds" in line for line in lines)


def test_cli_reports_bad_arguments(capsys):
    assert main(["toy", "--vocab-size", "1"]) == 2
    assert "vocab_size must be an integer >= 2, got 1" in capsys.readouterr().err


@pytest.mark.slow
def test_train_demo_runs_and_samples_the_reference(tmp_path):
    lines = []
    res = demo.train_demo(minutes=0.05, run_dir=str(tmp_path / "demo"), nfe=16, num_samples=1, out=lines.append,
                          progress=False, threads=1, words=(32, 16))
    assert res["demo"]["step"] >= 1 and res["demo"]["val_nll"] > 0
    assert demo.REFERENCE.joinpath("meta.json").is_file(), "the reference checkpoint must ship with ddlm"
    ref = res["reference"]
    assert ref["val_nll_estimate"] < ref["unigram_entropy"] - 1.0  # clearly below the unigram entropy
    assert any(line.startswith("reference sample 0") for line in lines)
    # samples of the model it has just trained, and its bound next to the unigram entropy in nats and bits/char
    assert [line for line in lines if line.startswith("demo sample ")] == [f"demo sample 0: {res['demo_samples'][0]!r}"]
    bound_line = next(line for line in lines if "Demo model after" in line)
    assert "nats/char" in bound_line and "bits/char" in bound_line and "unigram entropy" in bound_line
    # a few seconds of training leave the model above the unigram entropy, which is said
    assert any(line.startswith("WARNING:") and "not below the unigram entropy" in line for line in lines)
    assert res["held_out_words"]["known_fraction"] > 0.9  # real text, cut into blocks
    assert 0 <= res["demo_words"]["known_fraction"] <= 1 and res["demo_words"]["total_words"] > 50
    # the shipped reference writes mostly real words (see docs/training.md)
    assert res["reference_words"]["known_fraction"] > 0.4
    # running it again continues the run: the time budget adds up over reruns
    again = demo.train_demo(minutes=0.05, run_dir=str(tmp_path / "demo"), nfe=4, num_samples=1,
                            out=lines.append, progress=False, threads=1, words=(2, 4), reference=False)
    assert again["demo"]["step"] > res["demo"]["step"]
    assert again["demo"]["train_minutes"] > res["demo"]["train_minutes"] + 0.04


def test_demo_warns_far_below_the_documented_step_count():
    low, minutes = demo.DOCUMENTED_STEPS[0], demo.DOCUMENTED_MINUTES
    assert demo.few_steps_warning(low, minutes) is None
    assert demo.few_steps_warning(low // 2 + 1, minutes) is None
    warning = demo.few_steps_warning(low // 4, minutes)
    assert warning.startswith(f"WARNING: {low // 4} steps in {minutes:.1f} minutes") and "far fewer" in warning
    assert demo.few_steps_warning(low // 4, minutes / 4) is None  # proportional to the time trained


def test_demo_picks_the_faster_thread_count(monkeypatch):
    import torch

    from ddlm.config import load_config

    before = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    cfg = load_config("demo-mdm")
    for one, many, expected in ((0.1, 0.5, 1), (0.3, 0.2, 2)):
        monkeypatch.setattr(demo, "_seconds_per_step", lambda c, n, give_up_after=None, one=one, many=many:
                            one if n == 1 else many)
        lines = []
        assert demo._use_threads(None, cfg, lines.append) == expected and seen[-1] == expected
        assert lines[0].startswith(f"CPU threads: {expected} ")
    assert demo._use_threads(3, cfg, lines.append) == 3 and seen[-1] == 3  # given: not measured
    assert before >= 1


def test_real_words_of_an_autoregressive_model_counts_its_own_samples():
    import torch

    from ddlm.data.tokenizers import CharTokenizer
    from ddlm.models.ar import ARConfig, ARTransformer

    tok = CharTokenizer.from_text("the cat sat on a mat\n")
    torch.manual_seed(0)
    model = ARTransformer(ARConfig.preset("tiny", tok.vocab_size, 17, hidden=32, blocks=1, heads=2))
    res = demo.real_words(model, None, tok, 16, nfe=0, num_samples=5, temperature=0.7, seed=3)
    bos = torch.full((5, 1), tok.bos_id, dtype=torch.long)
    x = model.generate(bos, 17, temperature=0.7, generator=torch.Generator().manual_seed(3))[:, 1:]
    texts = [tok.decode(row.tolist()) for row in x]
    assert x.shape == (5, 16)
    expected = demo._known(texts)
    assert {k: res[k] for k in expected} == expected
    assert res["num_samples"] == 5 and res["temperature"] == 0.7
