"""The Flower engine's overhead, measured in one process (alternating runs, medians):

* wall time of ``hfedmoe run`` on the tiny preset with ``engine.name = "flower-sim"`` (``flwr run``
  on a local simulation connection: a background SuperLink, the ServerApp, one Ray ClientApp actor
  that keeps model and data between messages) over the same run in-process
  (``engine.name = "simulation"``), both as fresh CLI processes (imports, model and data building
  included on both sides); ``--compare-src DIR`` adds flower-sim with the package in ``DIR/src``
  (e.g. an older revision: ``git archive REV src | tar -x -C DIR``), in the same alternation;
* decoding a client update: our codec over Flower's own ``Array.numpy()`` of the same records.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_flower_sim.py [--repeats 3] [--rounds 4] \
        [--compare-src DIR] [--config configs/default.toml --set data.max_examples=1500]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _bench import alternate, one_thread

REPO = Path(__file__).resolve().parents[1]


def cli_run(engine: str, rounds: int, parent: Path, src: Path = REPO / "src", config: Path = REPO / "configs" / "tiny.toml",
            sets: tuple[str, ...] = ()) -> None:
    out = parent / f"{engine}-{len(list(parent.glob(engine + '-*')))}"  # a fresh run folder each time
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    r = subprocess.run([sys.executable, "-m", "hfedmoe.cli.app", "run", "--config", str(config),
                        "--out", str(out), "--quiet", "--set", f"engine.name={engine}",
                        "--set", f"federation.rounds={rounds}", *[x for kv in sets for x in ("--set", kv)]],
                       env=env, capture_output=True, text=True, timeout=1800, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{engine} run failed: {r.stderr[-1500:]}")


def decode_ratio(repeats: int) -> float:
    from flwr.app import Array, ArrayRecord

    from hfedmoe.engines.flower.codec import _get

    rec = ArrayRecord()
    for i in range(20):  # 20 x 1 MB float32 tensors
        rec[f"k{i}"] = Array.from_numpy_ndarray(np.random.default_rng(i).random((512, 512), dtype=np.float32))
    t = alternate({"ours": lambda: [_get(rec, k, set()) for k in rec],
                   "flower": lambda: [rec[k].numpy() for k in rec]}, repeats * 5)
    return t["ours"] / t["flower"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--compare-src", type=Path, help="also time flower-sim with the package in DIR/src")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "tiny.toml", help="the preset timed")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key=value for both engines' runs")
    args = ap.parse_args()
    one_thread()
    print(f"decode, ours / Flower Array.numpy(): {decode_ratio(args.repeats):.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        fns = {e: (lambda e=e: cli_run(e, args.rounds, Path(tmp), config=args.config, sets=tuple(args.sets)))
               for e in ("simulation", "flower-sim")}
        if args.compare_src is not None:
            fns["compared"] = lambda: cli_run("flower-sim", args.rounds, Path(tmp) / "compared",
                                              args.compare_src.resolve() / "src")
        t = alternate(fns, args.repeats, warmup=0)
    print(f"{args.config.stem} {' '.join(args.sets)}, {args.rounds} rounds: simulation {t['simulation']:.1f} s, flower-sim {t['flower-sim']:.1f} s "
          f"(medians of {args.repeats}); flower-sim / in-process {t['flower-sim'] / t['simulation']:.2f}")
    if args.compare_src is not None:
        print(f"flower-sim of {args.compare_src}: {t['compared']:.1f} s; / in-process "
              f"{t['compared'] / t['simulation']:.2f}; this tree / it {t['flower-sim'] / t['compared']:.2f}")


if __name__ == "__main__":
    main()
