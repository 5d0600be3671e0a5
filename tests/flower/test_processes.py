"""Stopping the processes an example started, by the folder they name on their command line."""

from __future__ import annotations

import subprocess
import sys

from hfedmoe.engines.flower.processes import free_port, stop_processes_naming


def test_stops_only_the_processes_naming_the_marker_and_their_children(tmp_path):
    marker = tmp_path / "deployment-x"
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    mine = subprocess.Popen([sys.executable, "-c", code, str(marker)])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path / "elsewhere")])
    try:
        import psutil
        import time

        deadline = time.monotonic() + 20
        while not psutil.Process(mine.pid).children() and time.monotonic() < deadline:
            time.sleep(0.1)
        child = psutil.Process(mine.pid).children()[0]
        assert stop_processes_naming(marker, wait_s=5) == 2  # the process and its child
        assert mine.wait(timeout=5) is not None
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        assert other.poll() is None  # a process naming another folder is left alone
    finally:
        for p in (mine, other):
            p.kill()
            p.wait()


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
