"""`hfedmoe run | resume | bench | assets`: the only place that prints.

Bad input (config, data, missing assets) is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from hfedmoe.errors import HFedMoEError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Federated fine-tuning of Mixture-of-Experts models across heterogeneous clients.")
console = Console()
err_console = Console(stderr=True)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress display, no per-round lines")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="log INFO messages of the library")]


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    if quiet:
        level = logging.ERROR
    logging.basicConfig(level=level, format="%(message)s",
                        handlers=[RichHandler(console=err_console, show_path=False)], force=True)
    for noisy in ("transformers", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def _fail(msg: str) -> None:
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _guard(fn):
    """Run ``fn`` turning user errors into one line and exit code 2."""
    try:
        return fn()
    except HFedMoEError as exc:
        _fail(str(exc))


def _run_simulation(sim: Any, rounds: int | None, quiet: bool) -> None:
    from hfedmoe.cli.progress import RunProgress

    with RunProgress(console, quiet=quiet) as progress:
        sim.on_event = progress.on_event
        sim.run(rounds)


def _report(sim: Any) -> dict[str, Any]:
    from hfedmoe.report.run_report import write_run_report

    clients = [
        {"client_id": c.client_id, "profile": c.profile, "num_train": len(c.train_idx), "num_val": len(c.val_idx),
         "budget": b.budget, "fits_full": b.fits_full}
        for c, b in zip(sim.fed.clients, sim.budgets)
    ]
    context = {"model": sim.model_description, "dataset": sim.fed.dataset.name, "clients": clients,
               "majority_rate": sim.fed.majority_rate(), "num_test": len(sim.fed.test_idx)}
    return write_run_report(sim.out_dir, context)


def _final_lines(summary: dict[str, Any], out: Path, quiet: bool) -> None:
    if quiet:
        return
    acc0, acc = summary.get("initial_test_accuracy"), summary.get("final_test_accuracy")
    if summary.get("initial_test_perplexity") is not None:  # causal LM
        h0, h1 = summary.get("initial_heldout_perplexity"), summary.get("final_heldout_perplexity")
        held = f"; held-out {h0:.2f} -> {h1:.2f}" if h0 is not None and h1 is not None else ""
        console.print(f"[bold]done[/]: test perplexity {summary['initial_test_perplexity']:.2f} (round 0) -> "
                      f"{summary['final_test_perplexity']:.2f}{held}; wall {summary['wall_time_s']:.0f} s")
        console.print(f"report: {out / 'report.md'}")
        return
    console.print(
        f"[bold]done[/]: test accuracy {100 * (acc0 or 0):.1f}% (round 0) -> {100 * (acc or 0):.1f}% "
        f"(majority class {100 * summary['majority_rate']:.1f}%), "
        f"simulated {summary['sim_time_s']:.0f} s, wall {summary['wall_time_s']:.0f} s"
    )
    console.print(f"report: {out / 'report.md'}")


@app.command()
def run(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML preset (configs/*.toml)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("runs/latest"),
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a field: key=value (dotted)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing run in --out")] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Run one federated fine-tuning job and write metrics, plots, a report and checkpoints to --out."""
    _setup_logging(verbose, quiet)

    def go() -> None:
        from hfedmoe.config import load_config
        from hfedmoe.engines.simulation import Simulation

        cfg = load_config(config, set_ or [])
        if (out / "metrics.jsonl").exists():
            if not overwrite:
                raise HFedMoEError(f"--out: {out} already holds a run (use `hfedmoe resume {out}` or --overwrite)")
            shutil.rmtree(out)
        sim = Simulation(cfg, out)
        if not quiet:
            console.print(f"[bold]hfedmoe[/] {cfg.method.name} | {sim.model_description} | {sim.fed.dataset.name}: "
                          f"{len(sim.fed.clients)} clients, budgets {[b.budget for b in sim.budgets]}")
        _run_simulation(sim, None, quiet)
        _final_lines(_report(sim), out, quiet)

    _guard(go)


@app.command()
def resume(
    out: Annotated[Path, typer.Argument(help="run directory written by `hfedmoe run`")],
    rounds: Annotated[Optional[int], typer.Option("--rounds", help="total rounds to reach (default: the config's)")] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Continue a run from its last complete checkpoint."""
    _setup_logging(verbose, quiet)

    def go() -> None:
        from hfedmoe.config import config_from_dict, validate
        from hfedmoe.engines.simulation import Simulation

        cfg_path = out / "config.toml"
        if not cfg_path.is_file():
            raise HFedMoEError(f"DIR: expected a run directory with config.toml, got {out}")
        cfg = config_from_dict(tomllib.loads(cfg_path.read_text()))
        if rounds is not None:
            if rounds < 1:
                raise HFedMoEError(f"--rounds: expected an integer >= 1, got {rounds}")
            cfg.federation.rounds = rounds
        validate(cfg)
        sim = Simulation(cfg, out)
        start = sim.restore()
        if not quiet:
            console.print(f"[bold]resume[/] {out} from round {start} to {cfg.federation.rounds}")
        _run_simulation(sim, cfg.federation.rounds, quiet)
        _final_lines(_report(sim), out, quiet)

    _guard(go)


@app.command()
def bench(
    config: Annotated[Path, typer.Option("--config", "-c", help="bench file (configs/bench-*.toml)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory (rerun to resume)")] = Path("runs/bench"),
    quick: Annotated[bool, typer.Option("--quick", help="the file's [quick] subset: fewer methods, seeds, rounds")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override every run's field: key=value")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="comma-separated seeds replacing the file's")] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Run methods x datasets x seeds on identical partitions and budgets; write report.md and report.html."""
    _setup_logging(verbose, quiet)

    def go() -> None:
        from hfedmoe.bench import load_bench_config, run_bench

        seed_list = None
        if seeds is not None:
            try:
                seed_list = [int(x) for x in seeds.split(",") if x.strip()]
            except ValueError:
                raise HFedMoEError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
        spec = load_bench_config(config, quick=quick, extra_sets=set_ or [], seeds_override=seed_list)

        def on_event(e: dict[str, Any]) -> None:
            if quiet or e["kind"] != "run_end":
                return
            what = "skipped (finished)" if e["skipped"] else f"{e['seconds']:.0f} s"
            acc = e.get("final_test_accuracy")
            acc_s = f", test accuracy {100 * acc:.1f}%" if acc is not None else ""
            console.print(f"{e['dataset']} / {e['method']} / seed {e['seed']}: {what}{acc_s}", highlight=False)

        report = run_bench(spec, out, on_event)
        if not quiet:
            console.print(f"report: {report} and {report.with_suffix('.html')}")

    _guard(go)


@app.command()
def assets(
    json_: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List the pretrained models and datasets: installed or not, where, size, licence."""
    from hfedmoe.assets.table import assets_as_rows, render_assets_table

    if json_:
        import json

        console.print_json(json.dumps(assets_as_rows()))
    else:
        render_assets_table(console)


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Option("--run", help="a causal-LM run directory (hfedmoe run --out)")],
    prompt: Annotated[str, typer.Option("--prompt", help="text to continue")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="tokens to generate")] = 40,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="sampling seed")] = 0,
) -> None:
    """Stream a continuation of PROMPT from a causal-LM run's newest global model."""
    _setup_logging(False, True)

    def go() -> None:
        from hfedmoe.cli.generate import load_run_model, stream_generate

        model, tokenizer, rnd = load_run_model(run_dir)
        err_console.print(f"[dim]global model after round {rnd}[/]")
        stream_generate(model, tokenizer, prompt, max_new_tokens, temperature, seed)

    _guard(go)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted: the last complete checkpoint is intact; continue with `hfedmoe resume DIR`")
        sys.exit(130)


if __name__ == "__main__":
    main()
