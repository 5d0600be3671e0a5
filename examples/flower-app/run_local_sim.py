"""Run moeapp on Flower's Simulation Engine the way flwr 1.42 supports: ``flwr run`` against a
local simulation connection (``address = ":local:"``), not the deprecated ``run_simulation``.

What it does, all under ``--work`` (nothing in ``~/.flwr``):

1. writes a Flower config file (``FLWR_HOME/config.toml``) with a connection ``local-sim``;
2. ``flwr run examples/flower-app local-sim --federation-config "num-supernodes=N ..." --stream``:
   flwr starts a local SuperLink in simulation mode (in the background, on two free loopback ports
   chosen here), submits the app with ``num-supernodes`` virtual SuperNodes (one CPU each, one Ray
   worker per CPU given) and streams its log until the run ends; runtime dependency installation
   and flwr's update check are off (hfedmoe comes from this environment);
3. stops that background SuperLink and everything it started, by process id.

Usage (repository root, the venv's Python)::

    PYTHONPATH=src python examples/flower-app/run_local_sim.py --work /tmp/moeapp-sim \\
        --run-config "num-server-rounds=2 max-examples=200"
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from hfedmoe.engines.flower.local_sim import federation_config, local_sim_env, write_local_connection
from hfedmoe.engines.flower.processes import stop_processes_naming

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def run_local_sim(work: Path, run_config: str, num_supernodes: int = 4, num_cpus: int = 1,
                  timeout_s: float = 1200) -> subprocess.CompletedProcess:
    """``flwr run`` the example app on a local simulation connection; returns the finished
    ``flwr run --stream`` process (its output is the run's log)."""
    work = Path(work).resolve()
    home = work / "flwr-home"
    write_local_connection(home)
    env = local_sim_env(home)  # hfedmoe's own source folder on PYTHONPATH
    try:
        return subprocess.run([str(BIN / "flwr"), "run", str(HERE), "local-sim", "--run-config", run_config,
                               "--federation-config", federation_config(num_supernodes, num_cpus), "--stream"],
                              env=env, cwd=work, capture_output=True, text=True, timeout=timeout_s)
    finally:
        stop_processes_naming(home)  # the background SuperLink logs into home


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/moeapp-local-sim"))
    ap.add_argument("--run-config", default="num-server-rounds=2", help="overrides of [tool.flwr.app.config]")
    ap.add_argument("--num-supernodes", type=int, default=4)
    ap.add_argument("--num-cpus", type=int, default=1, help="CPUs Ray may use (one ClientApp per CPU)")
    ap.add_argument("--timeout", type=float, default=1200)
    args = ap.parse_args()
    save_to = (args.work / "final_model.pt").resolve()
    r = run_local_sim(args.work, f'{args.run_config} save-to="{save_to}"', args.num_supernodes, args.num_cpus,
                      args.timeout)
    print(r.stdout[-4000:], r.stderr[-2000:], sep="\n")
    if r.returncode != 0 or not save_to.is_file():
        print(f"run_local_sim.py: flwr run failed (rc {r.returncode}) or wrote no {save_to}", file=sys.stderr)
        raise SystemExit(1)
    print(f"final model in {save_to}")


if __name__ == "__main__":
    main()
