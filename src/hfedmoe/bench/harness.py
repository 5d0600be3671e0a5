"""Running a bench: every (dataset, method, seed) run and the validation-only sweep; resumable.

The bench file format is documented in :mod:`hfedmoe.bench.spec`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfedmoe.bench.metric import BenchMetric
from hfedmoe.bench.report import write_bench_report
from hfedmoe.bench.spec import BenchConfig, Dataset, trial_sets, run_config, sweep_config, trial_id
from hfedmoe.config import RunConfig, config_to_dict
from hfedmoe.errors import HFedMoEError
from hfedmoe.report.run_report import summarize

log = logging.getLogger(__name__)


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
    # evaluation 17x faster than 2 next to one busy neighbour. `workers` > 1 runs that many runs
    # at once, each in its own process (e.g. 2 on 2 cores).
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
                tuned_sets[m] = trial_sets(best)
        jobs = [Job(d.name, m, s, run_config(bench, d, m, s, tuned_sets.get(_tuned_as(m, tuned_sets))),
                    out / "runs" / d.name / m / f"seed{s}")
                for m in bench.methods for s in bench.seeds]
        _execute(jobs, bench.workers, emit, d.metric)
    _atomic_json(out / "sweep.json", sweeps)
    path = write_bench_report(bench, out, sweeps)
    log.info("bench finished in %.0f s", time.perf_counter() - t0)
    return path


@dataclass(frozen=True)
class Job:
    """One run of the bench: where it goes and what it is (for progress events)."""
    dataset: str
    method: str
    seed: int | str
    cfg: RunConfig
    out: Path


def _timed_run(cfg: RunConfig, out: Path) -> tuple[dict[str, Any], bool, float]:
    t = time.perf_counter()
    summary, skipped = run_once(cfg, out)
    return summary, skipped, time.perf_counter() - t


def _exit_with(parent: int, poll_s: float = 2.0) -> None:
    """Ends this worker process once ``parent`` is gone (killed by SIGTERM or SIGKILL, which run
    no cleanup): a spawned worker would otherwise go on training an orphaned run. The run itself
    resumes from its last checkpoint when the bench is started again."""
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(1)


def _worker_init(threads: int, level: int, parent: int | None = None) -> None:
    """A spawned worker: the runs' thread count, and the parent's log level with transformers as
    quiet as in the parent (no load reports or progress bars interleaved with the bench's lines);
    it exits when the bench process ``parent`` dies."""
    import threading

    import torch
    from transformers.utils import logging as hf_logging

    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="exit-with-parent").start()

    torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("transformers").setLevel(max(level, logging.WARNING))
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _execute(jobs: list[Job], workers: int, emit: Callable[[Event], None],
             metric: BenchMetric | None = None) -> list[tuple[dict[str, Any], bool, float]]:
    """Run ``jobs`` (independent runs), ``workers`` at a time, each worker its own process with the
    runs' own thread count; results in the order of ``jobs``, events as each run ends (with the
    run's final ``metric`` score, when given). Every run is deterministic given its config, so the
    results do not depend on ``workers``."""
    results: list[tuple[dict[str, Any], bool, float] | None] = [None] * len(jobs)

    def done(i: int, result: tuple[dict[str, Any], bool, float]) -> None:
        results[i] = result
        j = jobs[i]
        summary, skipped, seconds = result
        event = {"kind": "run_end", "dataset": j.dataset, "method": j.method, "seed": j.seed, "skipped": skipped,
                 "seconds": seconds}
        if metric is not None:  # (sweep trials: none, they report no test score)
            event.update(metric=metric, final_score=summary.get(f"final_{metric.key}"))
        emit(event)

    pending = [i for i, j in enumerate(jobs) if not (j.out / "summary.json").is_file()]
    for i in sorted(set(range(len(jobs))) - set(pending)):  # finished: read back in this process
        done(i, _timed_run(jobs[i].cfg, jobs[i].out))
    if workers <= 1 or len(pending) <= 1:
        for i in pending:
            emit({"kind": "run_start", "dataset": jobs[i].dataset, "method": jobs[i].method, "seed": jobs[i].seed})
            done(i, _timed_run(jobs[i].cfg, jobs[i].out))
        return results  # type: ignore[return-value]
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, jobs[pending[0]].cfg.runtime.threads)
    ctx = multiprocessing.get_context("spawn")  # no forked torch / tokenizer state
    with ProcessPoolExecutor(min(workers, len(pending)), mp_context=ctx, initializer=_worker_init,
                             initargs=(threads, logging.getLogger().getEffectiveLevel(), os.getpid())) as pool:
        futures = {}
        for i in pending:
            emit({"kind": "run_start", "dataset": jobs[i].dataset, "method": jobs[i].method, "seed": jobs[i].seed})
            futures[pool.submit(_timed_run, jobs[i].cfg, jobs[i].out)] = i
        try:
            while futures:
                finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                for f in finished:
                    done(futures.pop(f), f.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return results  # type: ignore[return-value]


def _tuned_as(method: str, tuned: dict[str, list[str]]) -> str:
    """Which swept method's best values ``method`` uses: itself, else its family (hfedmoe-x -> hfedmoe)."""
    if method in tuned:
        return method
    family = method.split("-")[0]
    return family if family in tuned else method


def _run_sweep(bench: BenchConfig, d: Dataset, out: Path, emit: Callable[[Event], None]) -> dict[str, Any]:
    assert bench.sweep is not None
    trials = [(m, trial) for m in bench.sweep.methods for trial in bench.sweep.trials(m)]
    jobs = [Job(d.name, m, f"sweep {trial_id(trial)}", sweep_config(bench, d, m, trial),
                out / "sweep" / d.name / m / trial_id(trial)) for m, trial in trials]
    trials_out: list[dict[str, Any]] = []
    best: dict[str, dict[str, Any]] = {}
    best_score: dict[str, float] = {}

    metric = d.metric
    worst = -math.inf if metric.higher_is_better else math.inf
    for job, (_, trial), (summary, _, _) in zip(jobs, trials, _execute(jobs, bench.workers, emit)):
        score = summary.get(f"final_{metric.sweep_key}")  # client VALIDATION, never test
        trials_out.append({"method": job.method, "trial": trial, "val_score": score})
        # ties: the first trial in grid order; a NaN score never wins
        if score is not None and metric.better(score, best_score.get(job.method, worst)):
            best_score[job.method], best[job.method] = score, trial
    return {"trials": trials_out, "best": best, "score": metric.sweep_key,
            "direction": "max" if metric.higher_is_better else "min"}


# --- report -------------------------------------------------------------------------------



