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


def test_a_zombie_counts_as_stopped_and_a_process_ignoring_sigterm_is_killed():
    import signal
    import time

    import psutil

    from hfedmoe.engines.flower.processes import signal_then_kill

    # a parent that never reaps its exited child: the child stays a zombie while the parent lives
    code = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', '0']); print(p.pid, flush=True); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        zombie = psutil.Process(int(parent.stdout.readline()))
        assert stubborn.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20
        while zombie.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert zombie.status() == psutil.STATUS_ZOMBIE
        t0 = time.monotonic()
        signal_then_kill([zombie], signal.SIGTERM, wait_s=10)
        assert time.monotonic() - t0 < 2  # not the whole wait_s
        t0 = time.monotonic()
        proc = psutil.Process(stubborn.pid)
        signal_then_kill([proc], signal.SIGTERM, wait_s=1)
        assert 1 <= time.monotonic() - t0 < 5 and not proc.is_running()  # SIGTERM ignored, SIGKILL after 1 s
    finally:
        for p in (parent, stubborn):
            p.kill()
            p.wait()
