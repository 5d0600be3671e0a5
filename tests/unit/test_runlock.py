"""engines.runlock: one writer per folder, stale locks replaced, clear errors."""

import json
import os
import subprocess

import pytest

from hfedmoe.engines.runlock import RunLock
from hfedmoe.errors import HFedMoEError


def test_lock_is_exclusive_and_released(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        info = json.loads((run / ".lock").read_text())
        assert info["pid"] == os.getpid()
        with pytest.raises(HFedMoEError, match="already locked by this process"):
            RunLock(run).acquire()
    assert not run.exists()  # created by the lock, empty again: removed


def test_live_other_process_blocks_and_dead_one_is_stale(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    p = subprocess.Popen(["sleep", "30"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": p.pid, "host": os.uname().nodename}))
        with pytest.raises(HFedMoEError, match=f"in use by another hfedmoe process \\(pid {p.pid}\\)"):
            RunLock(run).acquire()
    finally:
        p.kill()
        p.wait()
    with RunLock(run):  # the same pid is dead now: stale
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    assert run.is_dir() and not (run / ".lock").exists()


def test_other_host_and_garbage_lock(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(HFedMoEError, match="on host elsewhere"):
        RunLock(run).acquire()
    (run / ".lock").write_text("garbage")
    with RunLock(run):
        pass


def test_a_file_in_the_way_is_one_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(HFedMoEError, match="expected a directory"):
        RunLock(f).acquire()
