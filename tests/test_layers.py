"""The package's layers point one way: evaluation, the bound and the run-folder code never import the
training loop (``ddlm.train``), however indirectly."""

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import ddlm.evaluate
for name in {modules!r}:
    importlib.import_module(name)
for info in pkgutil.iter_modules(ddlm.evaluate.__path__, "ddlm.evaluate."):
    importlib.import_module(info.name)
print("ddlm.train" in sys.modules)
"""


def test_evaluation_never_imports_the_training_loop():
    modules = ["ddlm", "ddlm.bound", "ddlm.runs", "ddlm.models.factory", "ddlm.data.prepare", "ddlm.cli"]
    out = subprocess.run([sys.executable, "-c", CHECK.format(modules=modules)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
