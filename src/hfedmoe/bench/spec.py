"""`hfedmoe bench`: methods x datasets x seeds on identical partitions, budgets and device profiles.

A bench file (``configs/bench-*.toml``)::

    base = "default.toml"             # run preset, relative to the bench file
    set = ["federation.rounds=10"]    # overrides for every run (dotted key=value, as --set)
    methods = ["hfedmoe", "fedavg"]
    seeds = [0, 1, 2]
    target_accuracy = 0.7             # for "rounds / simulated time to reach" (classification)
    target_perplexity = 300.0         # the same for a causal LM (reach = perplexity <= target)
    threads = 1                       # torch intra-op threads (1: shared cores)
    workers = 1                       # runs at once, one process each (2 on a 2-core machine)

    [[datasets]]
    name = "vader-natural"
    set = ["data.dataset=vader", "data.partition=natural"]
    # target_accuracy / target_perplexity here override the file's for this dataset

    [quick]                           # --quick: replaces methods / seeds, adds overrides
    methods = ["hfedmoe", "fedavg"]
    seeds = [0]
    set = ["federation.rounds=2"]
    sweep = false                     # skip the hyper-parameter sweep

    [sweep]                           # grid search on client VALIDATION scores, never test
    methods = ["hfedmoe", "random"]   # every swept method gets the same tuning budget
    seed = 100                        # held out: must not be one of `seeds` (default: max(seeds) + 100)
    set = ["federation.rounds=3"]
    grid = { "train.lr" = [1e-4, 3e-4, 1e-3] }              # common to every swept method
    trials_per_method = 6             # optional: each method's grid is sampled to this many trials
    [sweep.method_grid.hfedmoe]       # optional: method-specific knobs, crossed with `grid`
    "method.beta" = [0.0, 1.0, 10.0]

Every run writes ``OUT/runs/<dataset>/<method>/seed<k>/`` (sweep trials ``OUT/sweep/<dataset>/
<method>/<trial>/``). A run with ``summary.json`` is finished and skipped on rerun; an unfinished
one resumes from its last checkpoint, so a crash loses at most the run in progress. Partitions,
budgets and profiles depend only on the run config and seed, never on the method.

What is scored follows ``model.task`` of a dataset's runs (:mod:`hfedmoe.bench.metric`): test
accuracy for classification, test perplexity (lower is better) for a causal LM; sweeps then
maximise mean client validation accuracy or minimise mean client validation perplexity.
"""


from __future__ import annotations

import itertools
import json
import re
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from hfedmoe.bench.metric import BenchMetric, check_target, metric_for
from hfedmoe.config import RunConfig, apply_overrides, config_from_data, read_toml
from hfedmoe.errors import HFedMoEError

log = logging.getLogger(__name__)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")



@dataclass
class Dataset:
    name: str
    overrides: list[str]
    #: what its runs are scored on (from their model.task) and the rounds-to-target threshold
    #: (None: not measured); both set by :func:`load_bench_config`
    metric: BenchMetric = field(default_factory=lambda: metric_for("classification"))
    target: float | None = None
    targets: dict[str, Any] = field(default_factory=dict)  # the dataset's own target_* keys


@dataclass
class Sweep:
    methods: list[str]
    seed: int
    overrides: list[str]
    grid: dict[str, list[Any]]
    method_grids: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    trials_per_method: int | None = None

    def trials(self, method: str | None = None) -> list[dict[str, Any]]:
        """The trials of ``method``: ``grid`` x its ``method_grid``, sampled (seeded, in grid order)
        down to ``trials_per_method`` so every method gets the same tuning budget."""
        full = {**self.grid, **(self.method_grids.get(method, {}) if method else {})}
        keys = list(full)
        out = [dict(zip(keys, combo)) for combo in itertools.product(*(full[k] for k in keys))]
        n = self.trials_per_method
        if n is not None and len(out) > n:
            import numpy as np

            keep = np.sort(np.random.default_rng(self.seed).choice(len(out), size=n, replace=False))
            out = [out[i] for i in keep]
        return out


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
    workers: int = 1


def _strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HFedMoEError(f"{name}: expected a list of strings, got {value!r}")
    return list(value)


def load_bench_config(path: str | Path, quick: bool = False, extra_sets: list[str] | None = None,
                      seeds_override: list[int] | None = None, workers_override: int | None = None) -> BenchConfig:
    """Read and validate a bench file (every run config is validated before anything runs).

    ``extra_sets`` (CLI ``--set``) are appended to every run's overrides (sweep trials included)
    and ``seeds_override`` (CLI ``--seeds``) replaces the seeds; both are recorded in the report notes.
    """
    from hfedmoe.methods import METHODS

    p = Path(path)
    raw = read_toml(p, "--config")
    known = {"base", "set", "methods", "seeds", "datasets", "target_accuracy", "target_perplexity", "quick", "sweep",
             "notes", "threads", "workers"}
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
    if len(set(seeds)) != len(seeds):
        raise HFedMoEError(f"seeds: expected distinct seeds (a repeat is the same run twice), got {seeds!r}")
    if len(set(methods)) != len(methods):
        raise HFedMoEError(f"methods: expected distinct names, got {methods!r}")
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise HFedMoEError(f"methods: expected names from {', '.join(METHODS)}, got {bad or methods}")
    if not isinstance(datasets_raw, list) or not datasets_raw:
        raise HFedMoEError(f"datasets: expected a non-empty array of tables, got {datasets_raw!r}")
    datasets = []
    for i, d in enumerate(datasets_raw):
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not d["name"]:
            raise HFedMoEError(f"datasets[{i}]: expected a table with a name, got {d!r}")
        if not _SAFE_NAME.fullmatch(d["name"]):  # it becomes a folder under --out: no "..", no "/"
            raise HFedMoEError(f"datasets[{i}].name: expected letters, digits, '.', '_' or '-' (a folder name "
                               f"inside --out, not starting with '.'), got {d['name']!r}")
        targets = {k: d[k] for k in ("target_accuracy", "target_perplexity") if k in d}
        datasets.append(Dataset(d["name"], _strings(d.get("set", []), f"datasets[{i}].set"), targets=targets))
    if len({d.name for d in datasets}) != len(datasets):
        raise HFedMoEError(f"datasets: names must be unique, got {[d.name for d in datasets]}")
    target = check_target(metric_for("classification"), raw.get("target_accuracy", 0.5), "target_accuracy")
    if "target_perplexity" in raw:
        check_target(metric_for("causal-lm"), raw["target_perplexity"], "target_perplexity")
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
        sweep_seed = sweep_raw.get("seed", max(seeds) + 100)
        if not isinstance(sweep_seed, int) or sweep_seed in seeds:
            raise HFedMoEError(f"sweep.seed: expected an integer not among the evaluation seeds {seeds} "
                               f"(tuning on held-out seeds only), got {sweep_seed!r}")
        method_grids = sweep_raw.get("method_grid", {})
        if not isinstance(method_grids, dict) or not all(
                isinstance(g, dict) and all(isinstance(v, list) and v for v in g.values()) for g in method_grids.values()):
            raise HFedMoEError(f"sweep.method_grid: expected tables of non-empty lists per method, got {method_grids!r}")
        per = sweep_raw.get("trials_per_method")
        if per is not None and (not isinstance(per, int) or per < 1):
            raise HFedMoEError(f"sweep.trials_per_method: expected an integer >= 1, got {per!r}")
        sweep = Sweep(sweep_methods, int(sweep_seed), _strings(sweep_raw.get("set", []), "sweep.set"), grid,
                      method_grids, per)
    notes = raw.get("notes", [])
    if extra_sets or seeds_override:
        notes = list(notes) + [f"command-line overrides: --set {' '.join(extra_sets or [])} "
                               f"--seeds {','.join(map(str, seeds_override or seeds))}"]
    threads = raw.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise HFedMoEError(f"threads: expected an integer >= 1, got {threads!r}")
    workers = raw.get("workers", 1) if workers_override is None else workers_override
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 256:
        raise HFedMoEError(f"workers: expected an integer in [1, 256], got {workers!r}")
    overrides = [f"runtime.threads={threads}"] + overrides  # a file's `set` may still override it
    bench = BenchConfig(p, base, overrides, methods, list(seeds), datasets, float(target), sweep, quick,
                        _strings(notes, "notes") if notes else [], threads, workers)
    for i, d in enumerate(datasets):  # fail before running anything
        cfgs = {m: run_config(bench, d, m, seeds[0]) for m in methods}
        kept = sorted(m for m, c in cfgs.items() if c.federation.select_model != "last")
        if kept:  # a bench scores every method at the same round: the last one
            raise HFedMoEError(f"datasets[{i}] ({d.name}): federation.select_model: expected 'last' (a bench scores "
                               f"the last round of every method), got 'best-val' for {', '.join(kept)}")
        tasks = {m: c.model.task for m, c in cfgs.items()}
        if sweep is not None:
            for m in sweep.methods:
                for trial in sweep.trials(m):
                    tasks[f"sweep {m} {trial_id(trial)}"] = sweep_config(bench, d, m, trial).model.task
        if len(set(tasks.values())) > 1:
            raise HFedMoEError(f"datasets[{i}] ({d.name}): every run must have the same model.task (one metric "
                               f"per dataset), got {tasks}")
        _set_metric(d, next(iter(tasks.values())), raw, i)
    return bench


def _set_metric(d: Dataset, task: str, raw: dict[str, Any], i: int) -> None:
    """The dataset's metric from its runs' task, and its target (its own, else the file's)."""
    d.metric = metric_for(task)
    key = d.metric.target_field
    if key in d.targets:
        d.target = check_target(d.metric, d.targets[key], f"datasets[{i}].{key}")
    elif key in raw or d.metric.percent:
        d.target = check_target(d.metric, raw.get(key, 0.5), key)
    else:
        d.target = None  # a perplexity target has no sensible default: rounds-to-target not measured


def _build(data: dict[str, Any], overrides: list[str], where: str) -> RunConfig:
    try:
        cfg = config_from_data(apply_overrides(data, overrides))
    except HFedMoEError as exc:
        raise HFedMoEError(f"{where}: {exc}") from None
    return cfg


def run_config(bench: BenchConfig, dataset: Dataset, method: str, seed: int,
               tuned: list[str] | None = None) -> RunConfig:
    sets = bench.overrides + dataset.overrides + (tuned or []) + [f"method.name={method}", f"seed={seed}"]
    return _build(bench.base, sets, f"{dataset.name}/{method}/seed{seed}")


def sweep_config(bench: BenchConfig, dataset: Dataset, method: str, trial: dict[str, Any]) -> RunConfig:
    assert bench.sweep is not None
    sets = bench.overrides + dataset.overrides + bench.sweep.overrides + trial_sets(trial) + [
        f"method.name={method}", f"seed={bench.sweep.seed}"]
    return _build(bench.base, sets, f"sweep {dataset.name}/{method}/{trial_id(trial)}")


def trial_sets(trial: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in trial.items()]


def trial_id(trial: dict[str, Any]) -> str:
    return "_".join(f"{k.split('.')[-1]}{v}" for k, v in trial.items()) or "default"


