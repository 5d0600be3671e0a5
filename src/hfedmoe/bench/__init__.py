"""`hfedmoe bench`: methods x datasets x seeds on identical partitions, budgets and profiles.

``spec`` reads bench files, ``harness`` runs them (resumable), ``report`` writes the tables and plots.
"""

from hfedmoe.bench.harness import run_bench, run_once
from hfedmoe.bench.spec import BenchConfig, load_bench_config, run_config, sweep_config

__all__ = ["BenchConfig", "load_bench_config", "run_bench", "run_config", "run_once", "sweep_config"]
