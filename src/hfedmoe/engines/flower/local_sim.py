"""``engine.name = "flower-sim"``: the run on Flower's Simulation Engine the way flwr 1.42 supports,
``flwr run <app> <connection>`` against a local simulation connection (``address = ":local:"``).

:func:`run_local_simulation` (the CLI's side):

1. copies the Flower App (:data:`APP_DIR`: a ``pyproject.toml`` naming hfedmoe's ServerApp and
   ClientApp) into a fresh temporary folder ``T`` that also holds ``FLWR_HOME`` (a Flower config
   file with one connection, ``local-sim``), the run's resolved config (``run.toml``), the run config
   of the app (``run-config.toml``: config, out, resume, ...), Ray's temporary folder and the logs;
2. ``flwr run T/app local-sim --federation-config "num-supernodes=<clients> ..." --stream`` on two
   free loopback ports: flwr starts a background SuperLink in simulation mode, which starts the
   ServerApp (``serverapp.main``) and the ClientApps on Ray (one CPU each, ``engine.num_actors`` at
   a time); runtime dependency installation, telemetry and the update check are off, nothing is
   fetched;
3. the ServerApp builds the run from ``run.toml`` (restoring the run folder's checkpoint on resume),
   writes the run folder as the in-process engine does (metrics, checkpoints, report) and appends
   its progress events to ``T/events.jsonl`` (:class:`EventLog`); the CLI tails that file;
4. when the ServerApp has reported its end (or its error), or the ``flwr run`` process has exited,
   or on any exception (Ctrl-C included), every process whose command line names ``T`` is stopped
   with its children (the detached SuperLink, ``flwr-simulation``, Ray), and ``T`` is removed;
   SIGTERM counts as Ctrl-C meanwhile. A failed run leaves Flower's log in
   ``<run folder>/flower-sim.log``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

import hfedmoe

from hfedmoe.config import RunConfig
from hfedmoe.config.loading import dump_config
from hfedmoe.engines.flower.processes import free_port, stop_processes_naming
from hfedmoe.errors import HFedMoEError

#: The Flower App folder (``pyproject.toml`` only: its components are hfedmoe's, imported from the
#: environment) that ``flwr run`` submits for flower-sim and the deployment example.
APP_DIR = Path(__file__).resolve().parent / "app"
#: Seconds between two looks at the events file.
POLL_S = 0.1
#: Seconds the processes get to stop after SIGTERM (then SIGKILL); everything they had to write
#: (metrics, checkpoints, report) is on disk before the ServerApp reports its end.
STOP_WAIT_S = 5.0

Event = dict[str, Any]


class EventLog:
    """The ServerApp's side: progress events appended to a file as JSON lines (a no-op for ``""``)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path) if path else None

    def __bool__(self) -> bool:
        return self.path is not None

    def write(self, event: Event) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, sort_keys=True) + "\n")


@dataclass
class EventTail:
    """The CLI's side: the complete lines appended to ``path`` since the last call."""

    path: Path
    pos: int = 0
    partial: bytes = field(default=b"", repr=False)

    def read(self) -> list[Event]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.pos)
            data = fh.read()
        self.pos += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [json.loads(x) for x in lines if x.strip()]


@dataclass
class Resume:
    """``hfedmoe resume``'s options, applied by the ServerApp to the run folder's checkpoint."""

    discard_invalid: bool = False
    allow_change: set[str] = field(default_factory=set)


def federation_config(num_supernodes: int, num_cpus: int) -> str:
    """``flwr run --federation-config`` (flwr 1.42's way; a connection's ``options.*`` are deprecated):
    ``num_supernodes`` virtual SuperNodes on Ray, one CPU per ClientApp, ``num_cpus`` for Ray (so that
    many ClientApps at a time), no GPU."""
    return (f"num-supernodes={num_supernodes} backend=\"ray\" client-resources-num-cpus=1 "
            f"client-resources-num-gpus=0.0 init-args-num-cpus={num_cpus} init-args-num-gpus=0 "
            "init-args-logging-level=\"warning\" init-args-log-to-driver=true")


def write_local_connection(home: Path) -> None:
    """A Flower config file in ``home`` (``FLWR_HOME``) with one connection, ``local-sim``, to a
    local simulation SuperLink that ``flwr run`` starts on demand."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text('[superlink]\ndefault = "local-sim"\n\n'
                                      '[superlink.local-sim]\naddress = ":local:"\n')


def app_run_config(cfg_path: Path, out: Path, events: Path, resume: Resume | None, replace: Path | None) -> dict:
    """The app's run config (keys of :data:`APP_DIR`'s pyproject) for one flower-sim run."""
    rc: dict[str, Any] = {"config": str(cfg_path), "out": str(out), "events": str(events), "report": True,
                          "resume": resume is not None, "replace": str(replace) if replace else ""}
    if resume is not None:
        rc.update({"allow-change": ";".join(sorted(resume.allow_change)), "discard-invalid": resume.discard_invalid})
    return rc


def quiet_offline_env() -> None:
    """Telemetry and usage statistics off; one torch thread in every Ray worker; Flower's processes
    import this very source tree (not another installed copy)."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_DEDUP_LOGS"] = "0"
    # Ray's memory monitor kills workers when the whole machine is above 95% memory, even when
    # other programs hold it (a shared box); a ClientApp here needs a few hundred MB. Off unless set.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    src = str(Path(hfedmoe.__file__).resolve().parents[1])
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([src, *parts])


def local_sim_env(home: Path, ray_tmp: Path | None = None) -> dict[str, str]:
    """The environment of ``flwr run`` on a local simulation connection: ``FLWR_HOME`` = ``home``,
    two free loopback ports for the SuperLink it starts, nothing installed or fetched, telemetry and
    the update check off, this Python's scripts first on PATH; ``ray_tmp``: Ray's temporary folder
    (keep it short: Ray's socket paths live under it)."""
    quiet_offline_env()  # telemetry off, one torch thread, this source tree on PYTHONPATH
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    if ray_tmp is not None:
        env["RAY_TMPDIR"] = str(ray_tmp)
    return env


def _prepare(tmp: Path, cfg: RunConfig, out: Path, resume: Resume | None, replace: Path | None) -> Path:
    """Write the app, the Flower config file, the run's config and the app's run config into ``tmp``;
    returns the run config file."""
    shutil.copytree(APP_DIR, tmp / "app")
    write_local_connection(tmp / "flwr-home")
    (tmp / "ray").mkdir()
    dump_config(cfg, tmp / "run.toml")
    rc_path = tmp / "run-config.toml"
    rc_path.write_text(tomli_w.dumps(app_run_config(tmp / "run.toml", out.resolve(), tmp / "events.jsonl",
                                                    resume, replace.resolve() if replace else None)))
    return rc_path


def _failure(out: Path, log: Path, what: str) -> HFedMoEError:
    """``what`` plus where Flower's log was kept (``out/flower-sim.log``)."""
    if log.is_file() and out.is_dir():
        shutil.copyfile(log, out / "flower-sim.log")
        return HFedMoEError(f"{what}; Flower's log: {out / 'flower-sim.log'}")
    return HFedMoEError(what)


def run_local_simulation(cfg: RunConfig, out: Path, num_clients: int, on_event: Callable[[Event], None], *,
                         resume: Resume | None = None, replace: Path | None = None) -> dict[str, Any]:
    """Run ``cfg`` into the run folder ``out`` through ``flwr run`` on a local simulation connection
    (see the module docstring); ``on_event`` gets the ServerApp's events (``run_start`` with the
    banner lines, ``restored``, ``swapped``, the engine's round and client events) as they come.
    ``replace``: ``out`` is a staging folder that replaces this run folder after round 0. Returns the
    run's summary (summary.json); an error of the ServerApp is raised here (a config or checkpoint
    problem as :class:`HFedMoEError`)."""
    with sigterm_as_interrupt():  # `kill` of this process stops Flower's processes too
        return _run(cfg, out, num_clients, on_event, resume, replace)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does) while the block runs, so that ``finally``
    blocks run; the previous handler afterwards. Only in the main thread (elsewhere: unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(cfg: RunConfig, out: Path, num_clients: int, on_event: Callable[[Event], None], resume: Resume | None,
         replace: Path | None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="hfedmoe-flwr-"))  # short: Ray's socket paths live under it
    proc: subprocess.Popen | None = None
    try:
        env = local_sim_env(tmp / "flwr-home", tmp / "ray")
        rc_path = _prepare(tmp, cfg, out, resume, replace)
        log = tmp / "flwr-run.log"
        with open(log, "wb") as log_fh:
            proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "flwr"), "run", str(tmp / "app"), "local-sim",
                 "--run-config", str(rc_path), "--federation-config",
                 federation_config(num_clients, int(min(cfg.engine.num_actors, num_clients))),
                 "--stream"], env=env, cwd=tmp, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        tail = EventTail(tmp / "events.jsonl")
        while True:
            exited = proc.poll() is not None
            for ev in tail.read():
                if ev["kind"] == "end":
                    return ev["summary"]
                if ev["kind"] == "error":
                    if ev["user"]:
                        raise HFedMoEError(ev["message"])
                    raise _failure(out, log, f"engine.name = 'flower-sim': the ServerApp failed: {ev['type']}: "
                                             f"{ev['message']}")
                on_event(ev)
            if exited:
                raise _failure(out, log, f"engine.name = 'flower-sim': `flwr run` exited (code {proc.returncode}) "
                                         "before the run ended")
            time.sleep(POLL_S)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
        stop_processes_naming(tmp, wait_s=STOP_WAIT_S)  # the detached SuperLink, flwr-simulation, Ray
        if proc is not None:
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
