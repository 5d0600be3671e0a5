"""Local Flower processes for the examples and their tests: a free loopback port, and stopping the
processes that name a folder on their command line (flwr starts some of its processes detached,
so they are no longer children of whoever started the SuperLink)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import psutil


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_processes_naming(marker: str | Path, wait_s: float = 15.0) -> int:
    """Terminate, then kill after ``wait_s``, every process (and its children) whose command line
    contains ``marker`` (a folder only the caller's processes name), by process id; this process is
    spared. Returns how many processes were signalled."""
    mine = [p for p in psutil.process_iter(["pid", "cmdline"])
            if p.pid != os.getpid() and any(str(marker) in a for a in (p.info["cmdline"] or []))]
    family: list[psutil.Process] = []
    for p in mine:
        try:
            family += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    signal_then_kill(family, signal.SIGTERM, wait_s)
    return len(family)


def signal_then_kill(procs: list[psutil.Process], sig: int = signal.SIGTERM, wait_s: float = 15.0) -> None:
    """Send ``sig`` to each of ``procs``, wait up to ``wait_s`` for them, SIGKILL the rest."""
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    alive = wait_gone(procs, wait_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    wait_gone(alive, wait_s)


def wait_gone(procs: list[psutil.Process], wait_s: float) -> list[psutil.Process]:
    """Wait up to ``wait_s`` until every one of ``procs`` has exited; returns those still running. A
    zombie counts as exited: a process whose parent died is reaped by init, but not where init does
    not reap (some containers), and waiting for it would only spend ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        psutil.wait_procs(procs, timeout=0)  # reaps those that are our own children
        alive = [p for p in procs if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
