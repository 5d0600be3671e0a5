"""Bytes per round per client from the serialised Flower records (loopback Grid, real ClientApp):
hfedmoe-restrict vs hfedmoe vs fedavg. Run from the repository root:
PYTHONPATH=src python benchmarks/bench_flower_bytes.py PRESET [key=value ...]"""
import sys, json, shutil; sys.path.insert(0, ".")
from pathlib import Path

from hfedmoe.config import load_config
from hfedmoe.engines.flower.clientapp import app
from hfedmoe.engines.flower.serverapp import FlowerRun
from tests.flower.loopback import LoopbackGrid

preset, extra = sys.argv[1], sys.argv[2:]
for method in ("hfedmoe-restrict", "hfedmoe", "fedavg"):
    cfg = load_config(preset, [f"method.name={method}", "federation.rounds=1"] + extra)
    out = Path(f"/tmp/hfedmoe-bench-bytes-{method}"); shutil.rmtree(out, ignore_errors=True)
    run = FlowerRun(cfg, out)
    grid = LoopbackGrid(app, [{"partition-id": i} for i in range(len(run.fed.clients))])
    run.strategy.start(grid)
    for l in (out / "metrics.jsonl").read_text().splitlines()[1:]:
        r = json.loads(l)
        print(method, "round", r["round"], "budgets", [b.budget for b in run.budgets], "failed", r["failed_clients"],
              "down", r["wire_download_bytes"], "up", r["wire_upload_bytes"], "modelled up", r["upload_bytes"], flush=True)
