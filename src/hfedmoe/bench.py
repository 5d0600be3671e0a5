"""`hfedmoe bench`: methods x datasets x seeds on identical partitions, budgets and device profiles.

A bench file (``configs/bench-*.toml``)::

    base = "default.toml"             # run preset, relative to the bench file
    set = ["federation.rounds=10"]    # overrides for every run (dotted key=value, as --set)
    methods = ["hfedmoe", "fedavg"]
    seeds = [0, 1, 2]
    target_accuracy = 0.7             # for "rounds / simulated time to reach"
    threads = 1                       # torch intra-op threads (1: shared cores)

    [[datasets]]
    name = "vader-natural"
    set = ["data.dataset=vader", "data.partition=natural"]

    [quick]                           # --quick: replaces methods / seeds, adds overrides
    methods = ["hfedmoe", "fedavg"]
    seeds = [0]
    set = ["federation.rounds=2"]
    sweep = false                     # skip the hyper-parameter sweep

    [sweep]                           # grid search on client VALIDATION accuracy, never test
    methods = ["hfedmoe"]             # each gets the same grid, i.e. the same tuning budget
    seed = 0
    set = ["federation.rounds=3"]
    grid = { "method.lam" = [0.3, 0.7], "method.beta" = [0.0, 0.1] }

Every run writes ``OUT/runs/<dataset>/<method>/seed<k>/`` (sweep trials ``OUT/sweep/<dataset>/
<method>/<trial>/``). A run with ``summary.json`` is finished and skipped on rerun; an unfinished
one resumes from its last checkpoint, so a crash loses at most the run in progress. Partitions,
budgets and profiles depend only on the run config and seed, never on the method.
"""

from __future__ import annotations

import html
import itertools
import json
import logging
import math
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hfedmoe.config import RunConfig, apply_overrides, config_from_dict, config_to_dict, read_toml, validate
from hfedmoe.errors import HFedMoEError
from hfedmoe.report.metrics import read_metrics
from hfedmoe.report.run_report import summarize

log = logging.getLogger(__name__)

SWEEP_SCORE = "client_val_accuracy_mean"


@dataclass
class Dataset:
    name: str
    overrides: list[str]


@dataclass
class Sweep:
    methods: list[str]
    seed: int
    overrides: list[str]
    grid: dict[str, list[Any]]

    def trials(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.grid[k] for k in keys))]


@dataclass
class BenchConfig:
    path: Path
    base: dict[str, Any]
    overrides: list[str]
    methods: list[str]
    seeds: list[int]
    datasets: list[Dataset]
    target_accuracy: float
    sweep: Sweep | None = None
    quick: bool = False
    notes: list[str] = field(default_factory=list)
    threads: int = 1


def _strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HFedMoEError(f"{name}: expected a list of strings, got {value!r}")
    return list(value)


def load_bench_config(path: str | Path, quick: bool = False, extra_sets: list[str] | None = None,
                      seeds_override: list[int] | None = None) -> BenchConfig:
    """Read and validate a bench file (every run config is validated before anything runs).

    ``extra_sets`` (CLI ``--set``) are appended to every run's overrides (sweep trials included)
    and ``seeds_override`` (CLI ``--seeds``) replaces the seeds; both are recorded in the report notes.
    """
    from hfedmoe.methods import METHODS

    p = Path(path)
    raw = read_toml(p, "--config")
    known = {"base", "set", "methods", "seeds", "datasets", "target_accuracy", "quick", "sweep", "notes", "threads"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise HFedMoEError(f"bench config: unknown keys {unknown} (known: {', '.join(sorted(known))})")
    base: dict[str, Any] = {}
    if "base" in raw:
        base = read_toml((p.parent / str(raw["base"])).resolve(), "base")
    # A bench writes dozens of runs: keep only the checkpoint resume needs (a file's `set` may override).
    overrides = ["federation.keep_checkpoints=1"] + _strings(raw.get("set", []), "set")
    methods = _strings(raw.get("methods", ["hfedmoe"]), "methods")
    seeds = raw.get("seeds", [0])
    datasets_raw = raw.get("datasets", [{"name": "default", "set": []}])
    sweep_raw = raw.get("sweep")
    q = raw.get("quick", {})
    if quick:
        methods = _strings(q.get("methods", methods), "quick.methods")
        seeds = q.get("seeds", seeds)
        overrides = overrides + _strings(q.get("set", []), "quick.set")
        if not q.get("sweep", False):
            sweep_raw = None
        elif isinstance(sweep_raw, dict):
            sweep_raw = {**sweep_raw, "set": list(sweep_raw.get("set", [])) + _strings(q.get("sweep_set", []),
                                                                                      "quick.sweep_set")}
    if extra_sets:
        overrides = overrides + list(extra_sets)
    if seeds_override:
        seeds = list(seeds_override)
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise HFedMoEError(f"seeds: expected a non-empty list of integers, got {seeds!r}")
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise HFedMoEError(f"methods: expected names from {', '.join(METHODS)}, got {bad or methods}")
    if not isinstance(datasets_raw, list) or not datasets_raw:
        raise HFedMoEError(f"datasets: expected a non-empty array of tables, got {datasets_raw!r}")
    datasets = []
    for i, d in enumerate(datasets_raw):
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not d["name"]:
            raise HFedMoEError(f"datasets[{i}]: expected a table with a name, got {d!r}")
        datasets.append(Dataset(d["name"], _strings(d.get("set", []), f"datasets[{i}].set")))
    if len({d.name for d in datasets}) != len(datasets):
        raise HFedMoEError(f"datasets: names must be unique, got {[d.name for d in datasets]}")
    target = raw.get("target_accuracy", 0.5)
    if not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise HFedMoEError(f"target_accuracy: expected a number in (0, 1], got {target!r}")
    sweep = None
    if sweep_raw is not None:
        if not isinstance(sweep_raw, dict) or not isinstance(sweep_raw.get("grid"), dict) or not sweep_raw["grid"]:
            raise HFedMoEError(f"sweep: expected a table with a non-empty grid, got {sweep_raw!r}")
        grid = sweep_raw["grid"]
        for k, v in grid.items():
            if not isinstance(v, list) or not v:
                raise HFedMoEError(f"sweep.grid.{k}: expected a non-empty list, got {v!r}")
        sweep_methods = _strings(sweep_raw.get("methods", ["hfedmoe"]), "sweep.methods")
        bad = [m for m in sweep_methods if m not in METHODS]
        if bad:
            raise HFedMoEError(f"sweep.methods: expected names from {', '.join(METHODS)}, got {bad}")
        sweep = Sweep(sweep_methods, int(sweep_raw.get("seed", seeds[0])),
                      _strings(sweep_raw.get("set", []), "sweep.set"), grid)
    notes = raw.get("notes", [])
    if extra_sets or seeds_override:
        notes = list(notes) + [f"command-line overrides: --set {' '.join(extra_sets or [])} "
                               f"--seeds {','.join(map(str, seeds_override or seeds))}"]
    threads = raw.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise HFedMoEError(f"threads: expected an integer >= 1, got {threads!r}")
    bench = BenchConfig(p, base, overrides, methods, list(seeds), datasets, float(target), sweep, quick,
                        _strings(notes, "notes") if notes else [], threads)
    for d in datasets:  # fail before running anything
        for m in methods:
            run_config(bench, d, m, seeds[0])
        if sweep is not None:
            for m in sweep.methods:
                for trial in sweep.trials():
                    sweep_config(bench, d, m, trial)
    return bench


def _build(data: dict[str, Any], overrides: list[str], where: str) -> RunConfig:
    try:
        cfg = config_from_dict(apply_overrides(data, overrides))
        validate(cfg)
    except HFedMoEError as exc:
        raise HFedMoEError(f"{where}: {exc}") from None
    return cfg


def run_config(bench: BenchConfig, dataset: Dataset, method: str, seed: int,
               tuned: list[str] | None = None) -> RunConfig:
    sets = bench.overrides + dataset.overrides + (tuned or []) + [f"method.name={method}", f"seed={seed}"]
    return _build(bench.base, sets, f"{dataset.name}/{method}/seed{seed}")


def sweep_config(bench: BenchConfig, dataset: Dataset, method: str, trial: dict[str, Any]) -> RunConfig:
    assert bench.sweep is not None
    sets = bench.overrides + dataset.overrides + bench.sweep.overrides + _trial_sets(trial) + [
        f"method.name={method}", f"seed={bench.sweep.seed}"]
    return _build(bench.base, sets, f"sweep {dataset.name}/{method}/{trial_id(trial)}")


def _trial_sets(trial: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in trial.items()]


def trial_id(trial: dict[str, Any]) -> str:
    return "_".join(f"{k.split('.')[-1]}{v}" for k, v in trial.items()) or "default"


# --- one run ------------------------------------------------------------------------------


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def run_once(cfg: RunConfig, out: Path) -> tuple[dict[str, Any], bool]:
    """Run (or resume, or skip when finished) one simulation in ``out``; (summary, was_skipped)."""
    from hfedmoe.config import dump_config
    from hfedmoe.engines.simulation import Simulation

    done = out / "summary.json"
    cfg_path = out / "config.toml"
    if cfg_path.is_file():
        previous = tomllib.loads(cfg_path.read_text())
        if previous != tomllib.loads(_dumps(cfg)):
            raise HFedMoEError(f"{out}: holds a run with a different config (delete it to rerun)")
    if done.is_file():
        return json.loads(done.read_text()), True
    out.mkdir(parents=True, exist_ok=True)
    sim = Simulation(cfg, out)
    start = sim.restore()
    if start:
        log.info("%s: resuming from round %d", out, start)
    dump_config(cfg, cfg_path)
    rows = sim.run()
    summary = {
        **summarize(rows),
        "dataset": sim.fed.dataset.name,
        "model": sim.model_description,
        "majority_rate": sim.fed.majority_rate(),
        "clients": [{"profile": c.profile, "budget": b.budget, "fits_full": b.fits_full,
                     "num_train": int(len(c.train_idx))} for c, b in zip(sim.fed.clients, sim.budgets)],
    }
    _atomic_json(done, summary)
    return summary, False


def _dumps(cfg: RunConfig) -> str:
    import tomli_w

    return tomli_w.dumps(config_to_dict(cfg))


# --- the whole bench -----------------------------------------------------------------------

Event = dict[str, Any]


def run_bench(bench: BenchConfig, out: Path, on_event: Callable[[Event], None] | None = None) -> Path:
    """Sweep (if configured), then every dataset x method x seed; then the report. Returns report.md."""
    import torch

    emit = on_event or (lambda e: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    # On shared cores, intra-op threads fight other processes: 1 thread ran a MiniLM-MoE
    # evaluation 17x faster than 2 next to one busy neighbour. Runs are sequential anyway.
    torch.set_num_threads(bench.threads)
    try:
        return _run_all(bench, out, emit, t0)
    finally:
        torch.set_num_threads(threads)


def _run_all(bench: BenchConfig, out: Path, emit: Callable[[Event], None], t0: float) -> Path:
    sweeps: dict[str, dict[str, Any]] = {}
    for d in bench.datasets:
        tuned_sets: dict[str, list[str]] = {}
        if bench.sweep is not None:
            sweeps[d.name] = _run_sweep(bench, d, out, emit)
            for m, best in sweeps[d.name]["best"].items():
                tuned_sets[m] = _trial_sets(best)
        for m in bench.methods:
            for s in bench.seeds:
                cfg = run_config(bench, d, m, s, tuned_sets.get(_tuned_as(m, tuned_sets)))
                run_dir = out / "runs" / d.name / m / f"seed{s}"
                emit({"kind": "run_start", "dataset": d.name, "method": m, "seed": s})
                t = time.perf_counter()
                summary, skipped = run_once(cfg, run_dir)
                emit({"kind": "run_end", "dataset": d.name, "method": m, "seed": s, "skipped": skipped,
                      "seconds": time.perf_counter() - t, "final_test_accuracy": summary["final_test_accuracy"]})
    _atomic_json(out / "sweep.json", sweeps)
    path = write_bench_report(bench, out, sweeps)
    log.info("bench finished in %.0f s", time.perf_counter() - t0)
    return path


def _tuned_as(method: str, tuned: dict[str, list[str]]) -> str:
    """Which swept method's best values ``method`` uses: itself, else its family (hfedmoe-x -> hfedmoe)."""
    if method in tuned:
        return method
    family = method.split("-")[0]
    return family if family in tuned else method


def _run_sweep(bench: BenchConfig, d: Dataset, out: Path, emit: Callable[[Event], None]) -> dict[str, Any]:
    assert bench.sweep is not None
    trials_out: list[dict[str, Any]] = []
    best: dict[str, dict[str, Any]] = {}
    for m in bench.sweep.methods:
        best_score = -math.inf
        for trial in bench.sweep.trials():
            tid = trial_id(trial)
            emit({"kind": "run_start", "dataset": d.name, "method": m, "seed": f"sweep {tid}"})
            t = time.perf_counter()
            summary, skipped = run_once(sweep_config(bench, d, m, trial), out / "sweep" / d.name / m / tid)
            score = summary.get(f"final_{SWEEP_SCORE}")
            emit({"kind": "run_end", "dataset": d.name, "method": m, "seed": f"sweep {tid}", "skipped": skipped,
                  "seconds": time.perf_counter() - t, "final_test_accuracy": None})
            trials_out.append({"method": m, "trial": trial, "val_accuracy": score})
            if score is not None and score > best_score:  # ties: the first trial in grid order
                best_score, best[m] = score, trial
    return {"trials": trials_out, "best": best, "score": SWEEP_SCORE}


# --- report -------------------------------------------------------------------------------


def _eval_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("test_accuracy") is not None]


def run_stats(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """The table's numbers for one run's metrics rows."""
    ev = _eval_rows(rows)
    trained = [r for r in rows if r["round"] > 0]
    reach = next((r for r in ev if r["test_accuracy"] >= target), None)
    bwd = [r["backward_flops_per_client"] for r in trained if r.get("backward_flops_per_client")]
    return {
        "final": ev[-1]["test_accuracy"] if ev else math.nan,
        "best": max((r["test_accuracy"] for r in ev), default=math.nan),
        "rounds_to_target": reach["round"] if reach else None,
        "time_to_target": reach["sim_time_s"] if reach else None,
        "upload": float(np.mean([r["upload_bytes"] for r in trained])) if trained else 0.0,
        "download": float(np.mean([r["download_bytes"] for r in trained])) if trained else 0.0,
        "failed": sum(len(r["failed_clients"]) for r in rows),
        "dropped": sum(len(r.get("dropped_clients", [])) for r in rows),
        "backward_flops": float(np.mean(bwd)) if bwd else 0.0,
        "wall": rows[-1]["wall_time_s"] if rows else 0.0,
        "sim_time": rows[-1]["sim_time_s"] if rows else 0.0,
    }


def _mean_curve(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per round, mean test accuracy and simulated time over seeds (rounds every seed evaluated)."""
    by_round: dict[int, list[dict[str, Any]]] = {}
    for rows in runs:
        for r in _eval_rows(rows):
            by_round.setdefault(r["round"], []).append(r)
    return [{"round": k, "test_accuracy": float(np.mean([r["test_accuracy"] for r in v])),
             "sim_time_s": float(np.mean([r["sim_time_s"] for r in v]))}
            for k, v in sorted(by_round.items()) if len(v) == len(runs)]


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _mb(x: float) -> str:
    return f"{x / 1e6:.2f}"


def collect(bench: BenchConfig, out: Path) -> dict[str, dict[str, Any]]:
    """dataset -> {"rows": table rows, "curves": method -> mean curve, "clients": ...} from disk."""
    result: dict[str, dict[str, Any]] = {}
    for d in bench.datasets:
        table, curves, clients = [], {}, None
        for m in bench.methods:
            runs, stats = [], []
            for s in bench.seeds:
                run_dir = out / "runs" / d.name / m / f"seed{s}"
                if not (run_dir / "summary.json").is_file():
                    continue
                rows = read_metrics(run_dir / "metrics.jsonl")
                runs.append(rows)
                stats.append(run_stats(rows, bench.target_accuracy))
                if clients is None and m != "centralized":
                    clients = json.loads((run_dir / "summary.json").read_text()).get("clients")
            if not stats:
                continue
            finals = np.array([s["final"] for s in stats])
            reached = [s for s in stats if s["rounds_to_target"] is not None]
            table.append({
                "method": m,
                "seeds": len(stats),
                "final_mean": float(finals.mean()),
                "final_std": float(finals.std(ddof=1)) if len(finals) > 1 else 0.0,
                "best": float(np.mean([s["best"] for s in stats])),
                "reached": len(reached),
                "rounds_to_target": float(np.mean([s["rounds_to_target"] for s in reached])) if reached else None,
                "time_to_target": float(np.mean([s["time_to_target"] for s in reached])) if reached else None,
                **{k: float(np.mean([s[k] for s in stats]))
                   for k in ("upload", "download", "failed", "dropped", "backward_flops", "wall", "sim_time")},
            })
            curves[m] = _mean_curve(runs)
        result[d.name] = {"rows": table, "curves": curves, "clients": clients}
    return result


COLUMNS = ["method", "final test acc % (mean ± std)", "best acc %", "rounds to target", "sim time to target (s)",
           "upload MB/round", "download MB/round", "failed client-rounds", "dropped client-rounds",
           "backward GFLOPs/client-round", "wall time (s)"]


def _table_cells(r: dict[str, Any]) -> list[str]:
    reach = f"{r['rounds_to_target']:.1f} ({r['reached']}/{r['seeds']})" if r["rounds_to_target"] is not None \
        else f"- (0/{r['seeds']})"
    ttt = f"{r['time_to_target']:.1f}" if r["time_to_target"] is not None else "-"
    return [r["method"], f"{_pct(r['final_mean'])} ± {_pct(r['final_std'])}", _pct(r["best"]), reach, ttt,
            _mb(r["upload"]), _mb(r["download"]), f"{r['failed']:.1f}", f"{r['dropped']:.1f}",
            f"{r['backward_flops'] / 1e9:.2f}", f"{r['wall']:.0f}"]


def write_bench_report(bench: BenchConfig, out: Path, sweeps: dict[str, dict[str, Any]]) -> Path:
    """report.md, report.html and per-dataset PNGs in ``out``."""
    from hfedmoe.report.plots import plot_accuracy

    data = collect(bench, out)
    mode = "quick" if bench.quick else "full"
    md = [f"# hfedmoe bench: {bench.path.name} ({mode})", "",
          f"- methods: {', '.join(bench.methods)}; seeds: {bench.seeds}; target accuracy "
          f"{100 * bench.target_accuracy:.0f}%",
          f"- overrides for every run: {', '.join(bench.overrides) or '-'}",
          "- every method of a dataset runs on identical partitions, budgets and device profiles (same config "
          "and seed; only method.name differs, plus its tuned knobs)",
          "- 'rounds / sim time to target': mean over the seeds that reached it (reached/seeds); failed = clients "
          "whose training state did not fit their memory (fedavg); dropped = skipped up front (fedavg-drop)", ""]
    md += [f"- {n}" for n in bench.notes]
    body_html: list[str] = []
    for d in bench.datasets:
        info = data[d.name]
        md += [f"## {d.name}", "", f"dataset overrides: {', '.join(d.overrides) or '-'}", ""]
        body_html.append(f"<h2>{html.escape(d.name)}</h2><p>dataset overrides: "
                         f"{html.escape(', '.join(d.overrides) or '-')}</p>")
        if info["clients"]:
            desc = ", ".join(f"{c['profile']}: budget {c['budget']}{'' if not c['fits_full'] else ' (fits full)'}"
                             for c in info["clients"])
            md += [f"clients (profile: experts per layer): {desc}", ""]
            body_html.append(f"<p>clients: {html.escape(desc)}</p>")
        md += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        rows_html = ["<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + "</tr>"]
        for r in info["rows"]:
            cells = _table_cells(r)
            md.append("| " + " | ".join(cells) + " |")
            rows_html.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        md.append("")
        body_html.append("<table>" + "".join(rows_html) + "</table>")
        for x, label in (("round", "round"), ("sim_time_s", "time")):
            name = f"{d.name}_accuracy_vs_{label}.png"
            plot_accuracy(info["curves"], out / name, x=x, title=f"{d.name}: test accuracy (mean over seeds)")
            md.append(f"![{name}]({name})")
            body_html.append(f'<img src="{html.escape(name)}" alt="{html.escape(name)}">')
        md.append("")
        sw = sweeps.get(d.name)
        md += ["### Hyper-parameter sweep", ""]
        if not sw:
            note = ("skipped (--quick): the base config's values are used" if bench.quick and bench.sweep is None
                    else "not configured: the base config's values are used")
            md += [note, ""]
            body_html.append(f"<h3>Hyper-parameter sweep</h3><p>{html.escape(note)}</p>")
        else:
            md += [f"score: final mean client **validation** accuracy ({SWEEP_SCORE}; the test set is never "
                   f"used), seed {bench.sweep.seed if bench.sweep else '-'}, overrides "
                   f"{', '.join(bench.sweep.overrides) if bench.sweep else '-'}; every swept method gets the same "
                   "grid; ablations use their family's best values (except the knob they fix); baselines without "
                   "method knobs are not swept", "", "| method | trial | val acc % | chosen |", "|---|---|---|---|"]
            sw_html = ["<tr><th>method</th><th>trial</th><th>val acc %</th><th>chosen</th></tr>"]
            for t in sw["trials"]:
                chosen = "yes" if sw["best"].get(t["method"]) == t["trial"] else ""
                trial = ", ".join(f"{k}={v}" for k, v in t["trial"].items())
                md.append(f"| {t['method']} | {trial} | {_pct(t['val_accuracy'])} | {chosen} |")
                sw_html.append(f"<tr><td>{html.escape(t['method'])}</td><td>{html.escape(trial)}</td>"
                               f"<td>{_pct(t['val_accuracy'])}</td><td>{chosen}</td></tr>")
            md.append("")
            body_html.append("<h3>Hyper-parameter sweep</h3><table>" + "".join(sw_html) + "</table>")
    md_text = "\n".join(md) + "\n"
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>hfedmoe bench</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:48%}</style></head><body>"
            f"<h1>hfedmoe bench: {html.escape(bench.path.name)} ({mode})</h1>"
            + "".join(f"<p>{html.escape(line[2:])}</p>" for line in md[2:] if line.startswith("- "))
            + "".join(body_html) + "</body></html>\n")
    for name, text in (("report.md", md_text), ("report.html", page)):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)
    return out / "report.md"


__all__ = ["BenchConfig", "load_bench_config", "run_bench", "run_once", "run_stats", "write_bench_report"]
