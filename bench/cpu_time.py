"""Run a tree's ``bench/sampling.py`` with wall time replaced by this process's CPU time.

On a loaded machine wall-clock figures of one configuration vary by 2-4x between identical runs; the
process's own CPU time (``time.process_time``, one thread) is far steadier. Used to compare two
versions of the sampling loop side by side (docs/benchmarks.md):

    OMP_NUM_THREADS=1 PYTHONPATH=TREE/src .venv/bin/python bench/cpu_time.py TREE --no-dit --no-memory --steps 8
"""

import runpy
import sys
import time

if __name__ == "__main__":
    tree = sys.argv[1]
    sys.path.insert(0, tree + "/src")
    time.perf_counter = time.process_time  # bench/sampling.py times with perf_counter
    sys.argv = [tree + "/bench/sampling.py", *sys.argv[2:]]
    runpy.run_path(tree + "/bench/sampling.py", run_name="__main__")
