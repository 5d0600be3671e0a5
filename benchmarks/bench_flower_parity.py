"""Parity experiment: the same run through the in-process engine and Flower's Simulation Engine
(Ray), alternated in one process; prints wall times, their ratio, and the parity check."""
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from hfedmoe.config import load_config
from hfedmoe.engines.checkpoint import complete_rounds, load_checkpoint
from hfedmoe.engines.runner import drive, make_run

SET = ["federation.rounds=3", "data.max_examples=200"]
times = {"simulation": [], "flower-sim": []}
for rep in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
    for eng in ("simulation", "flower-sim"):
        out = Path(f"/tmp/hfedmoe-bench-parity-{eng}"); shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        drive(make_run(load_config("configs/tiny.toml", SET + [f"engine.name={eng}"]), out))
        times[eng].append(time.perf_counter() - t)
a, b = Path("/tmp/hfedmoe-bench-parity-simulation"), Path("/tmp/hfedmoe-bench-parity-flower-sim")
ra = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
rb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
skip = {"wall_time_s", "wire_download_bytes", "wire_upload_bytes", "failed_reasons"}
nan = lambda v: isinstance(v, float) and v != v
diffs = [(x["round"], k) for x, y in zip(ra, rb) for k in (set(x) | set(y)) - skip
         if x.get(k) != y.get(k) and not (nan(x.get(k)) and nan(y.get(k)))]
r = complete_rounds(a / "checkpoints")[-1]
ta, _ = load_checkpoint(a / "checkpoints", r); tb, _ = load_checkpoint(b / "checkpoints", r)
print("rounds", r, "metric rows", len(ra), len(rb), "differing metric values", diffs)
print("max |w_sim - w_flower|", max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta),
      "bit-identical tensors", sum(torch.equal(ta[k], tb[k]) for k in ta), "/", len(ta))
print("test_accuracy per round", [x.get("test_accuracy") for x in ra], [x.get("test_accuracy") for x in rb])
print("wall s", {k: [round(t, 1) for t in v] for k, v in times.items()},
      "ratio flower-sim/simulation (median)", round(statistics.median(times["flower-sim"]) / statistics.median(times["simulation"]), 2))
