import subprocess
import sys
from pathlib import Path

import pytest

from ddlm import cli

SRC = Path(__file__).resolve().parents[1] / "src"


def _run_python(code: str) -> str:
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                          timeout=120).stdout


def test_help_imports_no_torch():
    out = _run_python("import runpy, sys\nsys.argv = ['ddlm', '--help']\ntry:\n"
                      "    runpy.run_module('ddlm', run_name='__main__')\nexcept SystemExit:\n    pass\n"
                      "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    assert out.strip().splitlines()[-1] == "NO TORCH"
    assert "config" in out and "frontier" in out  # every command is listed


def test_importing_ddlm_is_lazy_but_complete():
    out = _run_python("import sys, ddlm\nprint('torch' in sys.modules)\n"
                      "print(ddlm.sample.__name__, ddlm.MaskedDiffusion.__name__, ddlm.exact.__name__)")
    assert out.split() == ["False", "sample", "MaskedDiffusion", "ddlm.exact"]


def _help_lines(parser) -> dict:
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {a.dest: a.help for a in action._choices_actions}


def test_listed_help_lines_are_the_commands_own():
    listed, full = _help_lines(cli.build_parser(load=[])), _help_lines(cli.build_parser())
    assert listed == full and set(cli.EXTERNAL) <= set(full)


@pytest.mark.parametrize("command", sorted(cli.EXTERNAL))
def test_each_command_defines_its_arguments_when_run(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert "--no-progress" in capsys.readouterr().out


@pytest.mark.slow  # 7-8 s each: the toy draws 20,000 exact samples per sampler and NFE
@pytest.mark.parametrize("flag,bars", [([], True), (["--no-progress"], False)])
def test_toy_progress_bars_follow_the_flag(flag, bars, capsys):
    assert cli.main(["toy", "--vocab-size", "2", "--length", "2", *flag]) == 0
    captured = capsys.readouterr()
    assert "Exact NLL bounds" in captured.out
    assert ("%|" in captured.err) == bars


def test_train_ends_with_the_bound_per_token_and_per_char_and_says_what_it_is(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    run = tmp_path / "run"
    assert cli.main(["train", "-", f"run_dir={run}", f"data.corpus={corpus}", "data.block_size=16", "model.hidden=32",
                     "model.blocks=1", "model.heads=2", "batch_size=8", "max_steps=2", "eval_batches=2",
                     "sample_nfe=2", "num_samples=1", "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("finished at step 2") and "nats/token = " in last and "bits/char" in last
    assert "an estimate from 2 batches on " in last and f"ddlm eval {run} --passes 4" in last
    assert "unigram entropy of the training split " in last
