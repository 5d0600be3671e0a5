"""`hfedmoe run | resume | bench | assets | config`: the only place that prints.

Bad input (config, data, missing assets, an unusable --out) is one line on stderr and exit code 2,
never a traceback, with nothing written. Any other exception is one line and exit code 1;
``--debug`` shows its plain traceback (never local variables).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from typer.core import TyperCommand

from hfedmoe.cli.boundary import guard as _guard
from hfedmoe.cli.boundary import resume_hint
from hfedmoe.cli.inputs import PlainHelpCommand, check_out, parse_seeds, resume_config
from hfedmoe.cli.summary import final_lines, print_banner
from hfedmoe.report.run_summary import banner_lines, write_report
from hfedmoe.errors import HFedMoEError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# pretty_exceptions_show_locals=False: a traceback must never dump config bytes or tensors;
# rich_markup_mode=None: help texts render as written ("[quick]" is not a markup tag).
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Federated fine-tuning of Mixture-of-Experts models across heterogeneous clients.")
# soft_wrap: lines are never cut at the console width (80 columns when output is not a terminal)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress display, no per-round lines")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="log INFO messages of the library")]
Debug = Annotated[bool, typer.Option("--debug", help="on an unexpected error, show the plain traceback")]


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    if quiet:
        level = logging.ERROR
    if err_console.is_terminal:
        handler: logging.Handler = RichHandler(console=err_console, show_path=False)
        fmt = "%(message)s"
    else:  # a log file or a pipe: plain, unwrapped, timestamped lines
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
    for noisy in ("transformers", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _set_threads(cfg: Any) -> None:
    """``runtime.threads`` for the whole process (model building and tokenising included)."""
    if cfg.runtime.threads > 0:
        import torch

        torch.set_num_threads(cfg.runtime.threads)


def _run_simulation(sim: Any, rounds: int | None, quiet: bool, also: Any = None) -> None:
    from hfedmoe.cli.progress import RunProgress

    with RunProgress(console, quiet=quiet) as progress:
        if also is None:
            sim.on_event = progress.on_event
        else:
            def both(e: dict[str, Any]) -> None:
                progress.on_event(e)
                also(e)
            sim.on_event = both
        sim.run(rounds)


def _banner(sim: Any, cfg: Any, quiet: bool) -> None:
    if not quiet:  # the run line and the memory plan (`hfedmoe plan`), warned when tight
        print_banner(console, err_console, banner_lines(sim, cfg))


def _run_replacing(cfg: Any, out: Path, quiet: bool) -> None:
    """``run --overwrite`` of a folder holding a run: the new run starts in ``.<name>.new-<pid>``
    next to it and replaces the old one only once its round-0 row is written (model, data and
    first evaluation all worked); a failure before that leaves the old run untouched."""
    from hfedmoe.engines.runlock import RunLock, replace_run
    from hfedmoe.engines.simulation import Simulation

    staging = out.parent / f".{out.name}.new-{os.getpid()}"
    with RunLock(out) as old_lock:
        if staging.exists():
            shutil.rmtree(staging)
        new_lock = RunLock(staging).acquire()
        swapped = False

        def moved(old: Path) -> None:  # the new run is in `out` now, the old one was moved to `old`
            nonlocal swapped
            old_lock.moved_to(old)
            new_lock.moved_to(out)
            swapped = True

        try:
            if cfg.engine.name == "flower-sim":  # the ServerApp, in Flower's process, swaps the folders
                from hfedmoe.cli.flower_sim import run_flower_sim

                run_flower_sim(console, err_console, cfg, staging, quiet, replace=(out, moved))
                return
            sim = Simulation(cfg, staging)
            _banner(sim, cfg, quiet)

            def swap(e: dict[str, Any]) -> None:
                if swapped or e["kind"] != "round_end":
                    return
                moved(replace_run(staging, out))
                sim.out_dir = out

            _run_simulation(sim, None, quiet, also=swap)
            final_lines(console, write_report(sim), out, quiet)
        finally:
            new_lock.release()
            if not swapped:
                shutil.rmtree(staging, ignore_errors=True)


@app.command()
def run(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML preset (configs/*.toml)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("runs/latest"),
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a field: key=value (dotted)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing run in --out")] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    debug: Debug = False,
) -> None:
    """Run one federated fine-tuning job and write metrics, plots, a report and checkpoints to --out."""
    _setup_logging(verbose, quiet)

    def go() -> None:
        from hfedmoe.config import load_config
        from hfedmoe.engines.runlock import RunLock

        cfg = load_config(config, set_ or [])
        _set_threads(cfg)
        check_out(out)
        if (out / "metrics.jsonl").exists():
            if not overwrite:
                raise HFedMoEError(f"--out: {out} already holds a run (use `hfedmoe resume {out}` or --overwrite)")
            _run_replacing(cfg, out, quiet)
            return
        with RunLock(out):
            if cfg.engine.name == "flower-sim":  # through `flwr run`, in Flower's processes
                from hfedmoe.cli.flower_sim import run_flower_sim

                run_flower_sim(console, err_console, cfg, out, quiet)
                return
            from hfedmoe.engines.simulation import Simulation

            sim = Simulation(cfg, out)
            _banner(sim, cfg, quiet)
            _run_simulation(sim, None, quiet)
            final_lines(console, write_report(sim), out, quiet)

    _guard(go, debug, on_interrupt=lambda: resume_hint(out))


@app.command()
def resume(
    out: Annotated[Path, typer.Argument(help="run directory written by `hfedmoe run`")],
    rounds: Annotated[Optional[int], typer.Option("--rounds", help="total rounds to reach (default: the config's)")] = None,
    allow_change: Annotated[Optional[list[str]], typer.Option(
        "--allow-change", help="a config field that may differ from the checkpoint's (safe ones only: "
        "federation.rounds, eval/checkpoint frequency, threads, timeouts); repeatable")] = None,
    discard_invalid: Annotated[bool, typer.Option(
        "--discard-invalid", help="set checkpoints that do not verify aside (round_N.invalid) and resume "
        "from the newest valid one (its later metric rows are rewritten)")] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    debug: Debug = False,
) -> None:
    """Continue a run from its last complete checkpoint."""
    _setup_logging(verbose, quiet)

    def go() -> None:
        from hfedmoe.config import validate
        from hfedmoe.engines.resume import check_allow_change
        from hfedmoe.engines.runlock import RunLock
        from hfedmoe.report.metrics import read_metrics

        allowed = set(allow_change or [])
        check_allow_change(allowed)
        if rounds is not None:
            allowed.add("federation.rounds")  # --rounds is the explicit change of the rounds

        cfg_path = out / "config.toml"
        if not cfg_path.is_file():
            raise HFedMoEError(f"DIR: expected a run directory with config.toml, got {out}")
        cfg = resume_config(cfg_path)
        done = max((int(r["round"]) for r in read_metrics(out / "metrics.jsonl")), default=0)
        if rounds is not None:
            if rounds < 1:
                raise HFedMoEError(f"--rounds: expected an integer >= 1, got {rounds}")
            if rounds < done:
                raise HFedMoEError(f"--rounds: expected at least {done} (the rounds this run has done), got {rounds}")
            cfg.federation.rounds = rounds
        validate(cfg)
        _set_threads(cfg)
        with RunLock(out, what="DIR"):
            if done >= cfg.federation.rounds and (out / "report.md").is_file():
                if not quiet:
                    console.print(f"{out}: finished at round {done}; nothing to do")
                return
            if cfg.engine.name == "flower-sim":  # the ServerApp restores the checkpoint, in Flower's process
                from hfedmoe.cli.flower_sim import run_flower_sim
                from hfedmoe.engines.flower.local_sim import Resume

                run_flower_sim(console, err_console, cfg, out, quiet, resume=Resume(discard_invalid, allowed))
                return
            from hfedmoe.engines.simulation import Simulation

            sim = Simulation(cfg, out)
            start = sim.restore(discard_invalid=discard_invalid, allow_change=allowed)
            for note in sim.restore_notes:  # even with --quiet: the run is not resumed from where it stopped
                err_console.print(f"resume: {note}", highlight=False, soft_wrap=True)
            if not quiet:
                console.print(f"[bold]resume[/] {out} from round {start} to {cfg.federation.rounds}")
            _run_simulation(sim, cfg.federation.rounds, quiet)
            final_lines(console, write_report(sim), out, quiet)

    _guard(go, debug, on_interrupt=lambda: resume_hint(out))


@app.command()
def bench(
    config: Annotated[Path, typer.Option("--config", "-c", help="bench file (configs/bench-*.toml)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory (rerun to resume)")] = Path("runs/bench"),
    quick: Annotated[bool, typer.Option("--quick", help="the file's [quick] subset: fewer methods, seeds, rounds")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override every run's field: key=value")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="comma-separated seeds replacing the file's")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="runs at once, one process each "
                                                   "(default: the file's `workers`, else 1)")] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
    debug: Debug = False,
) -> None:
    """Run methods x datasets x seeds on identical partitions and budgets; write report.md and report.html."""
    _setup_logging(verbose, quiet)

    def go() -> None:
        from hfedmoe.bench import load_bench_config, run_bench

        seed_list = None
        if seeds is not None:
            seed_list = parse_seeds(seeds)
        check_out(out)
        spec = load_bench_config(config, quick=quick, extra_sets=set_ or [], seeds_override=seed_list,
                                 workers_override=workers)

        def on_event(e: dict[str, Any]) -> None:
            if quiet or e["kind"] != "run_end":
                return
            what = "skipped (finished)" if e["skipped"] else f"{e['seconds']:.0f} s"
            metric, score = e.get("metric"), e.get("final_score")
            acc_s = ""
            if metric is not None and score is not None:
                acc_s = f", {metric.label} {metric.fmt(score)}{metric.unit}"
            console.print(f"{e['dataset']} / {e['method']} / seed {e['seed']}: {what}{acc_s}", highlight=False)

        from hfedmoe.engines.runlock import RunLock

        with RunLock(out):  # one bench writer per folder (its runs are resumed, not redone, on a rerun)
            report = run_bench(spec, out, on_event)
        if not quiet:
            console.print(f"report: {report} and {report.with_suffix('.html')}")

    _guard(go, debug, on_interrupt=lambda: f"finished runs are kept: rerun the same `hfedmoe bench` command "
                                           f"with --out {out} to continue")


@app.command()
def assets(
    json_: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    quiet: Quiet = False,
) -> None:
    """List the pretrained models and datasets: installed or not, where, size, licence.

    With -q: print nothing when every asset is installed; otherwise one line per missing asset
    (its pip command) and exit code 1.
    """
    from hfedmoe.assets.table import assets_as_rows, render_assets_table

    if quiet:
        missing = [r for r in assets_as_rows() if not r["installed"]]
        for r in missing:
            sys.stdout.write(f"missing {r['name']}: {r['install_command']}\n")
        raise typer.Exit(1 if missing else 0)
    if json_:
        import json

        console.print_json(json.dumps(assets_as_rows()))
    else:
        render_assets_table(console)


@app.command("config")
def config_cmd(
    show: Annotated[Optional[Path], typer.Option("--show", help="print this preset fully resolved (with --set)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a field: key=value (dotted)")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="the field table as Markdown (docs/config.md)")] = False,
    debug: Debug = False,
) -> None:
    """Every config field with type, default and help; or, with --show FILE [--set ...], the fully
    resolved config as TOML (--set alone: the defaults with those overrides)."""

    def go() -> None:
        from hfedmoe.config import load_config
        from hfedmoe.config.describe import render_markdown, render_resolved, render_text

        if show is not None or set_:
            sys.stdout.write(render_resolved(load_config(show, set_ or [])))
        elif markdown:
            sys.stdout.write(render_markdown() + "\n")
        else:
            sys.stdout.write(render_text() + "\n")

    _guard(go, debug)


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Option("--run", help="a causal-LM run directory (hfedmoe run --out)")],
    prompt: Annotated[str, typer.Option("--prompt", help="text to continue")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="tokens to generate")] = 40,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="sampling seed")] = 0,
    debug: Debug = False,
) -> None:
    """Stream a continuation of PROMPT from a causal-LM run's newest global model."""
    _setup_logging(False, True)

    def go() -> None:
        from hfedmoe.cli.generate import check_max_new_tokens, load_run_model, stream_generate

        check_max_new_tokens(max_new_tokens)
        model, tokenizer, rnd = load_run_model(run_dir)
        err_console.print(f"[dim]global model after round {rnd}[/]")
        stream_generate(model, tokenizer, prompt, max_new_tokens, temperature, seed)

    _guard(go, debug)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Option("--run", help="a run directory (hfedmoe run --out)")],
    peft: Annotated[Optional[Path], typer.Option("--peft", help="LoRA runs: write the PEFT adapter (with an offline "
                                                 "base); MoE-adapter runs: their adapters (docs/fft-moe.md)")] = None,
    merged: Annotated[Optional[Path], typer.Option("--merged", help="write a standard transformers checkpoint "
                                                   "(config, tokenizer, weights, model card) to this new directory")] = None,
    all_experts: Annotated[bool, typer.Option("--all-experts", help="MoEfied BERT with top_k < num_experts: write "
                                              "the dense BERT with every expert active (a different model)")] = False,
    debug: Debug = False,
) -> None:
    """Write a run's newest global model as a PEFT adapter (--peft) and/or a transformers checkpoint (--merged)."""
    _setup_logging(False, True)

    def go() -> None:
        from hfedmoe.cli.export import export_merged_run, export_peft_run

        if peft is None and merged is None:
            raise HFedMoEError("--peft / --merged: expected at least one output directory, got neither")
        if peft is not None:
            out, rnd = export_peft_run(run_dir, peft)
            console.print(f"PEFT adapter of round {rnd}: {out}")
        if merged is not None:
            out, rnd = export_merged_run(run_dir, merged, all_experts)
            console.print(f"transformers checkpoint of round {rnd}: {out}")

    _guard(go, debug)


@app.command()
def pretrain(
    preset: Annotated[str, typer.Option("--preset", help="top2-16 | switch-32 | test-tiny")] = "top2-16",
    seed: Annotated[int, typer.Option("--seed", help="pretraining seed (model.pretrain_seed)")] = 0,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Pretrain a benchmark MoE from scratch on the offline 8-domain corpus (cached in
    $HFEDMOE_CACHE or ~/.cache/hfedmoe; rerun after an interruption to resume), then print its
    per-domain perplexity and routing specialisation."""
    _setup_logging(False, quiet)

    def go() -> None:
        from hfedmoe.cli.pretrain import run_pretrain

        run_pretrain(preset, seed, console, quiet)

    _guard(go, debug)


from hfedmoe.cli.predict import predict  # noqa: E402 - a command in its own module

app.command()(predict)
from hfedmoe.cli.plan import plan  # noqa: E402 - the command lives with its logic

app.command()(plan)
for _info in app.registered_commands:  # every command, also those added above by other modules
    if _info.cls in (None, TyperCommand):
        _info.cls = PlainHelpCommand


def main() -> None:
    from hfedmoe.cli.boundary import INTERRUPT_REPORTED

    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        sys.exit(130)
    except SystemExit as exc:  # typer turns Ctrl-C outside a command's guard into a silent exit 130
        if exc.code == 130 and not INTERRUPT_REPORTED:
            sys.stderr.write("\ninterrupted before the command started: nothing was written\n")
        raise


if __name__ == "__main__":
    main()
