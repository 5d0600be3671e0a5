"""Flower's Deployment Engine for real: a SuperLink and 3 SuperNodes as separate processes on
127.0.0.1 (TLS, SuperNode authentication, no runtime installs), the run submitted with `flwr run`;
each SuperNode reads only its own partition file and the ServerApp only the server's file; the
result must equal the in-process engine's bit for bit. A SuperNode killed during round 1 must not
stop the run; a SuperLink killed after round 1 is restarted on its database, the SuperNodes
reconnect by themselves and the resumed run ends bit-identical. Slow: every Flower message starts a fresh ClientApp process (minutes on 2 cores)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hfedmoe.config import load_config
from hfedmoe.engines.simulation import Simulation
from tests.flower.conftest import REPO, TINY
from tests.flower.test_engine import assert_same_run, rows

pytestmark = pytest.mark.slow

SETTINGS = ["data.max_examples=160", "train.local_steps=2", "data.partition=iid", "data.num_clients=3",
            "federation.eval_every=2", "federation.rounds=2", "engine.round_timeout_s=400"]


def deployment_module():
    spec = importlib.util.spec_from_file_location("deploy", REPO / "examples" / "flower-deployment" / "deploy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def deploy(work: Path, kill_node: int | None = None) -> Path:
    mod = deployment_module()
    out = work / "run"
    with mod.Deployment(work, nodes=3) as d:
        d.setup()
        d.write_data(TINY, SETTINGS)
        d.start_superlink()
        d.register_supernodes()
        d.start_supernodes()
        d.submit(TINY, out, SETTINGS)
        d.wait_for(out, rounds=2, timeout_s=1200, kill_node=kill_node)
    assert not d.procs or all(p.poll() is not None for p in d.procs.values()), "a process was left running"
    return out


def test_three_supernodes_tls_auth_match_in_process(tmp_path):
    out = deploy(tmp_path / "dep")
    Simulation(load_config(TINY, SETTINGS), tmp_path / "sim").run()
    assert_same_run(tmp_path / "sim", out)


def test_a_supernode_killed_mid_round_does_not_stop_the_run(tmp_path):
    out = deploy(tmp_path / "dep", kill_node=2)
    r = rows(out)
    assert len(r) == 3 and 2 in r[2]["failed_clients"]
    assert sorted(int(c) for c in r[2]["client_trained"]) == [0, 1]


def test_superlink_killed_mid_run_resumes_bit_identical(tmp_path):
    """The SuperLink dies (SIGKILL, its ServerApp with it) once round 1 is checkpointed. It is
    restarted on its database; the same SuperNode processes reconnect by themselves (no new keys,
    no new nodes); the run resubmitted with resume=true equals the in-process run bit for bit."""
    mod = deployment_module()
    out = tmp_path / "dep" / "run"
    with mod.Deployment(tmp_path / "dep", nodes=3) as d:
        d.setup()
        d.write_data(TINY, SETTINGS)
        d.start_superlink()
        d.register_supernodes()
        d.start_supernodes()
        nodes = {n: p.pid for n, p in d.procs.items() if n.startswith("supernode")}
        link = d.procs["superlink"].pid
        d.submit(TINY, out, SETTINGS)
        d.wait_for(out, rounds=2, timeout_s=1500, kill_superlink=True)
        assert d.procs["superlink"].pid != link  # killed and restarted
        assert {n: p.pid for n, p in d.procs.items() if n.startswith("supernode")} == nodes
        assert all(d.procs[n].poll() is None for n in nodes), "a SuperNode gave up"
    Simulation(load_config(TINY, SETTINGS), tmp_path / "sim").run()
    assert_same_run(tmp_path / "sim", out)
