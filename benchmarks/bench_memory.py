"""Peak RSS of a run with 50 clients vs 4 clients (tiny preset, one round, every client trains),
each run in its own subprocess, measured in one invocation.

The server folds each update into running sums and drops it (streaming aggregation), so memory
should not grow with the number of clients: goal 50-client RSS <= 1.3x the 4-client RSS.

    python benchmarks/bench_memory.py [--clients 4 50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile


def peak_rss_mib(num_clients: int, out: str) -> float:
    """Run one round of the tiny preset with ``num_clients`` iid clients; the child's max RSS (MiB)."""
    code = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from hfedmoe.config import load_config\n"
        "from hfedmoe.engines.simulation import Simulation\n"
        f"cfg = load_config('configs/tiny.toml', ['data.partition=iid', 'data.num_clients={num_clients}', "
        "'data.max_examples=2000', 'data.min_client_size=1', 'federation.rounds=1', 'train.local_steps=2'])\n"
        f"Simulation(cfg, {out!r}).run()\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"child with {num_clients} clients failed (status {status})")
    return usage.ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, nargs=2, default=[4, 50])
    args = ap.parse_args()
    small, large = args.clients
    with tempfile.TemporaryDirectory() as tmp:
        rss = {n: peak_rss_mib(n, os.path.join(tmp, f"c{n}")) for n in (small, large)}
    print(f"peak RSS, tiny preset, 1 round, 2 local steps, every client trains: {small} clients "
          f"{rss[small]:.0f} MiB, {large} clients {rss[large]:.0f} MiB, ratio {rss[large] / rss[small]:.2f} "
          f"(goal <= 1.3)")


if __name__ == "__main__":
    main()
