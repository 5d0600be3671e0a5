"""`make gpu-check`: the GPU path in one prepared script (about 5-8 minutes on one H100).

On a machine without CUDA it prints "gpu-check: no CUDA device: skipped" and exits 0. With one:

1. parity: the tiny preset, one round, on the CPU and on the GPU (float32): train/test loss
   within 1e-3 relative, global weights within 1e-3 absolute;
2. mixed precision on the GPU: bfloat16 and float16 (GradScaler) against float32 on the tiny
   preset: loss within 3% per round, update cosine >= 0.9; parameters stay float32;
3. host syncs: ``torch.cuda.set_sync_debug_mode("warn")`` counts the syncs of a training step of
   the tiny preset (expected: one per MoE layer with ``train.dispatch = loop``, none per expert);
   dispatch: ``train.dispatch = static`` in bfloat16 (what ``auto`` picks on CUDA): the same syncs
   per step at 2 and 4 layers, an update close to the loop's, MiniLM's round-time ratio;
4. MiniLM (default preset) and the LLM preset (configs/llm.toml), one short round each on the
   GPU in bfloat16: finite losses, `hfedmoe plan`'s predicted peak next to the measured
   ``torch.cuda.max_memory_allocated``;
5. 4-bit: the tiny-lm preset's Mixtral saved to disk and loaded with ``model.load_in_4bit`` (bitsandbytes),
   one round: finite loss (skipped, and said so, without bitsandbytes);
6. step-time ratios (medians of alternating repeats): GPU / CPU on the tiny and MiniLM steps,
   bfloat16 / float32 on the GPU.

Prints one PASS / FAIL / SKIP line per check; exit 1 if any check failed.

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/gpu_check.py [--only parity,precision,...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FAST = ["data.max_examples=160", "train.local_steps=2", "train.local_epochs=1", "data.max_length=24",
        "federation.rounds=1", "model.attention_dropout=0.0", "train.dropout=0.0"]
CHECKS = ("parity", "precision", "syncs", "dispatch", "presets", "4bit", "speed")
results: list[tuple[str, str, str]] = []


def report(name: str, status: str, detail: str) -> None:
    results.append((name, status, detail))
    print(f"{status:4} {name}: {detail}", flush=True)


def run_sim(preset: str, sets: list[str]):
    """``(rows, simulation)`` of a one-round run of ``configs/{preset}.toml`` with ``sets``."""
    from hfedmoe.config import load_config
    from hfedmoe.engines.simulation import Simulation

    sim = Simulation(load_config(REPO / "configs" / f"{preset}.toml", sets), Path(tempfile.mkdtemp()))
    return sim.run(), sim


def flat_delta(sim, before: dict) -> torch.Tensor:
    after = sim.mm.model.state_dict()
    return torch.cat([(after[k].float().cpu() - before[k]).flatten() for k in before])


def check_parity() -> None:
    out = {}
    for device in ("cpu", "cuda"):
        rows, sim = run_sim("tiny", FAST + [f"runtime.device={device}"])
        out[device] = (rows[-1], {k: v.float().cpu() for k, v in sim.mm.model.state_dict().items()})
    (r_cpu, w_cpu), (r_gpu, w_gpu) = out["cpu"], out["cuda"]
    loss_rel = max(abs(r_gpu[k] - r_cpu[k]) / abs(r_cpu[k]) for k in ("train_loss", "test_loss"))
    w_diff = max(float((w_gpu[k] - w_cpu[k]).abs().max()) for k in w_cpu if w_cpu[k].is_floating_point())
    ok = loss_rel < 1e-3 and w_diff < 1e-3
    report("parity cpu/gpu (tiny, fp32)", "PASS" if ok else "FAIL",
           f"loss rel diff {loss_rel:.2e} (< 1e-3), weights max abs diff {w_diff:.2e} (< 1e-3)")


def check_precision() -> None:
    deltas, losses = {}, {}
    for dtype in ("float32", "bfloat16", "float16"):
        from hfedmoe.config import load_config
        from hfedmoe.engines.simulation import Simulation

        sets = FAST + ["runtime.device=cuda", f"runtime.dtype={dtype}", "federation.rounds=2"]
        sim = Simulation(load_config(REPO / "configs" / "tiny.toml", sets), Path(tempfile.mkdtemp()))
        before = {k: v.float().cpu().clone() for k, v in sim.mm.model.state_dict().items() if v.is_floating_point()}
        rows = sim.run()
        assert all(p.dtype == torch.float32 for p in sim.mm.model.parameters()), "parameters left float32"
        deltas[dtype], losses[dtype] = flat_delta(sim, before), [r["train_loss"] for r in rows[1:]]
    for dtype in ("bfloat16", "float16"):
        d, d32 = deltas[dtype], deltas["float32"]
        cos = float(d @ d32 / (d.norm() * d32.norm()))
        rel = max(abs(a - b) / abs(b) for a, b in zip(losses[dtype], losses["float32"]))
        report(f"mixed precision {dtype} vs fp32 (tiny, gpu)", "PASS" if cos >= 0.9 and rel <= 0.03 else "FAIL",
               f"update cosine {cos:.3f} (>= 0.9), loss rel diff {rel:.3f} (<= 0.03)")


def _syncs_per_step(sets: list[str]) -> float:
    """Host syncs a training step adds on the tiny preset (4-step minus 2-step client rounds)."""
    import hfedmoe.engines.simulation as engine
    from hfedmoe.client.train import train_client

    counts = []

    def counting(*a, **k):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                update = train_client(*a, **k)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append((len(caught), update.metrics["steps"]))
        return update

    engine.train_client = counting
    try:
        for steps in (2, 4):
            run_sim("tiny", [s for s in FAST if "local_steps" not in s] + sets + [f"train.local_steps={steps}"])
    finally:
        engine.train_client = train_client
    half = len(counts) // 2
    return (sum(c for c, _ in counts[half:]) - sum(c for c, _ in counts[:half])) / (2 * half)


def check_syncs() -> None:
    per_step = _syncs_per_step(["runtime.device=cuda", "train.dispatch=loop"])
    report("host syncs per training step (tiny, 2 layers, loop dispatch)", "PASS" if per_step <= 4 else "FAIL",
           f"{per_step:.1f} (CPU checker: 1 per layer + 1)")


def check_dispatch() -> None:
    """train.dispatch = static on CUDA bf16 (what auto picks there): syncs per step independent of
    the layers, training close to the loop's, round-time ratio on MiniLM."""
    bf16 = ["runtime.device=cuda", "runtime.dtype=bfloat16"]
    per = {(d, n): _syncs_per_step(bf16 + [f"train.dispatch={d}", f"model.tiny_layers={n}"])
           for d in ("loop", "static") for n in (2, 4)}
    ok = per["static", 2] == per["static", 4] and per["static", 2] <= 3
    report("static dispatch syncs per step (tiny bf16, 2 / 4 layers)", "PASS" if ok else "FAIL",
           f"static {per['static', 2]:.1f} / {per['static', 4]:.1f} (CPU checker: 2 at any depth), "
           f"loop {per['loop', 2]:.1f} / {per['loop', 4]:.1f}")
    deltas = {}
    for d in ("loop", "static"):
        sim_sets = FAST + bf16 + [f"train.dispatch={d}"]
        from hfedmoe.config import load_config
        from hfedmoe.engines.simulation import Simulation

        sim = Simulation(load_config(REPO / "configs" / "tiny.toml", sim_sets), Path(tempfile.mkdtemp()))
        before = {k: v.float().cpu().clone() for k, v in sim.mm.model.state_dict().items() if v.is_floating_point()}
        sim.run()
        deltas[d] = flat_delta(sim, before)
    cos = float(deltas["static"] @ deltas["loop"] / (deltas["static"].norm() * deltas["loop"].norm()))
    report("static vs loop dispatch (tiny, gpu bf16)", "PASS" if cos >= 0.95 else "FAIL",
           f"update cosine {cos:.3f} (>= 0.95)")
    sets = ["data.max_examples=400", "train.local_steps=4"] + bf16
    t = {d: _median_round("default", sets + [f"train.dispatch={d}"]) for d in ("loop", "static")}
    report("round time static / loop (MiniLM, gpu bf16)", "PASS", f"{t['static'] / t['loop']:.3f} (medians of 3)")


def check_presets() -> None:
    from hfedmoe.federation.memory import plan_memory

    for preset, sets in (("default", ["data.max_examples=400", "train.local_steps=4"]),
                         ("llm", ["train.local_steps=2", "federation.clients_per_round=2",
                                  "data.heldout_max_examples=8"])):
        torch.cuda.reset_peak_memory_stats()
        rows, sim = run_sim(preset, sets + ["federation.rounds=1", "runtime.device=cuda", "runtime.dtype=bfloat16"])
        plan = plan_memory(sim.cfg, sim.mm, sim.budgets, "cuda")
        peak = torch.cuda.max_memory_allocated()
        loss = rows[-1]["train_loss"]
        ok = loss == loss and loss < float("inf")
        report(f"{preset} preset 1 round (gpu, bf16)", "PASS" if ok else "FAIL",
               f"train loss {loss:.4f}; predicted peak {plan.process_peak / 2**30:.2f} GB, "
               f"measured max allocated {peak / 2**30:.2f} GB")


def check_4bit() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        report("4-bit (tiny Mixtral, bitsandbytes)", "SKIP", "bitsandbytes is not installed")
        return
    from hfedmoe.config import load_config
    from hfedmoe.federation.lm_model import build_lm_model

    with tempfile.TemporaryDirectory() as d:  # the tiny-lm preset's Mixtral and tokenizer as an HF checkpoint
        model, tokenizer, _ = build_lm_model(load_config(REPO / "configs" / "tiny-lm.toml").model, 0)
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        rows, _ = run_sim("tiny-lm", ["model.name=hf", f"model.path={d}", "model.load_in_4bit=true",
                                      "runtime.device=cuda", "federation.rounds=1", "train.local_steps=2",
                                      "data.max_examples=120", "data.heldout_max_examples=4"])
    loss = rows[-1]["train_loss"]
    report("4-bit (tiny Mixtral, bitsandbytes)", "PASS" if loss == loss else "FAIL", f"train loss {loss:.4f}")


def _median_round(preset: str, sets: list[str], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        from hfedmoe.config import load_config
        from hfedmoe.engines.simulation import Simulation

        sim = Simulation(load_config(REPO / "configs" / f"{preset}.toml", sets + ["federation.rounds=1"]),
                         Path(tempfile.mkdtemp()))
        t0 = time.perf_counter()
        sim.run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def check_speed() -> None:
    for preset, sets in (("tiny", FAST), ("default", ["data.max_examples=400", "train.local_steps=4"])):
        t = {name: _median_round(preset, sets + extra) for name, extra in (
            ("cpu", ["runtime.device=cpu"]), ("gpu", ["runtime.device=cuda"]),
            ("gpu_bf16", ["runtime.device=cuda", "runtime.dtype=bfloat16"]))}
        report(f"round time ratios ({preset})", "PASS",
               f"gpu/cpu {t['gpu'] / t['cpu']:.3f}, gpu bf16/fp32 {t['gpu_bf16'] / t['gpu']:.3f} "
               f"(medians of 3, one round incl. evaluation)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(CHECKS), help="comma-separated subset of " + ", ".join(CHECKS))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device: skipped")
        return 0
    torch.set_num_threads(1)
    print(f"gpu-check on {torch.cuda.get_device_name()} (torch {torch.__version__})", flush=True)
    for name in args.only.split(","):
        try:
            globals()[f"check_{name}"]()
        except Exception as exc:  # noqa: BLE001 - one line per failed check, then the next check
            traceback.print_exc()
            report(name, "FAIL", f"{type(exc).__name__}: {exc}")
    failed = [r for r in results if r[1] == "FAIL"]
    print(f"gpu-check: {len(results) - len(failed)} of {len(results)} passed or skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
