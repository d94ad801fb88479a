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

