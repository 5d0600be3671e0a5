"""flower-sim's two sides without Ray: the ServerApp that `flwr run` starts (here on the loopback
Grid) writes the run folder, the report and its progress events as the CLI expects them; the events
file is read in complete lines; every run config key the CLI sends is declared by the app (Flower
refuses undeclared ones)."""

from __future__ import annotations

import json
import tomllib

import pytest
from flwr.app import Context, RecordDict

import hfedmoe.engines.flower.clientapp as clientapp
from hfedmoe.config import load_config
from hfedmoe.config.loading import dump_config
from hfedmoe.engines.flower import serverapp
from hfedmoe.engines.flower.local_sim import APP_DIR, EventTail, Resume, app_run_config, sigterm_as_interrupt
from hfedmoe.engines.flower.nodes import num_clients
from hfedmoe.engines.simulation import Simulation
from hfedmoe.errors import HFedMoEError
from tests.flower.conftest import FAST, TINY
from tests.flower.loopback import LoopbackGrid
from tests.flower.test_engine import assert_same_run


def _serve(rc: dict, nodes: int = 4) -> LoopbackGrid:
    grid = LoopbackGrid(clientapp.app, [{"partition-id": i} for i in range(nodes)])
    serverapp.main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    return grid


def _events(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_every_run_config_key_the_cli_sends_is_declared_by_the_app(tmp_path):
    declared = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    for resume in (None, Resume(True, {"federation.rounds"})):
        rc = app_run_config(tmp_path / "run.toml", tmp_path / "out", tmp_path / "ev", resume, tmp_path / "old")
        assert set(rc) <= set(declared)
        assert all(type(rc[k]) is type(declared[k]) for k in rc), "Flower keeps the declared type"


def test_the_event_tail_returns_complete_lines_once(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read() == []  # no file yet
    path.write_bytes(b'{"kind": "a"}\n{"kind": "b", "x": [1, ')
    assert tail.read() == [{"kind": "a"}]
    with open(path, "ab") as fh:
        fh.write(b'2]}\n{"kind": "c"}\n')
    assert tail.read() == [{"kind": "b", "x": [1, 2]}, {"kind": "c"}]
    assert tail.read() == []


def test_the_serverapp_writes_the_in_process_run_report_and_events_and_replaces_the_old_run(tmp_path):
    cfg = load_config(TINY, FAST)
    Simulation(cfg, tmp_path / "sim").run()
    dump_config(cfg, tmp_path / "run.toml")
    target = tmp_path / "run"  # an older run the new one replaces after its round 0
    target.mkdir()
    (target / "metrics.jsonl").write_text('{"round": 0}\n')
    staging = tmp_path / ".run.new"
    rc = app_run_config(tmp_path / "run.toml", staging, tmp_path / "events.jsonl", None, target)
    _serve(rc)
    assert not staging.exists() and not list(tmp_path.glob(".run.old-*"))
    assert_same_run(tmp_path / "sim", target)
    ev = _events(tmp_path / "events.jsonl")
    kinds = [e["kind"] for e in ev]
    assert kinds[0] == "run_start" and kinds[-1] == "end"
    assert "4 clients" in ev[0]["lines"][0][0] and ev[0]["lines"][1][0].startswith(("memory", "warning"))
    assert kinds.index("swapped") == kinds.index("round_end") + 1  # right after round 0's row
    ends = [e for e in ev if e["kind"] == "round_end"]
    assert [e["round"] for e in ends] == [0, 1, 2]
    assert [e["row"] for e in ends] == [json.loads(x) for x in (target / "metrics.jsonl").read_text().splitlines()]
    assert ev[-1]["summary"] == json.loads((target / "summary.json").read_text())
    assert (target / "report.md").is_file()


def test_a_resumed_serverapp_reports_where_it_restarts_and_errors_as_one_event(tmp_path):
    cfg = load_config(TINY, FAST + ["federation.rounds=1"])
    dump_config(cfg, tmp_path / "run.toml")
    out = tmp_path / "run"
    _serve(app_run_config(tmp_path / "run.toml", out, tmp_path / "e1.jsonl", None, None))
    cfg.federation.rounds = 2
    dump_config(cfg, tmp_path / "run2.toml")
    _serve(app_run_config(tmp_path / "run2.toml", out, tmp_path / "e2.jsonl", Resume(False, {"federation.rounds"}),
                          None))
    ev = _events(tmp_path / "e2.jsonl")
    assert [e for e in ev if e["kind"] == "restored"] == [{"kind": "restored", "start": 1, "notes": []}]
    assert [e["round"] for e in ev if e["kind"] == "round_end"] == [2]
    # without --allow-change of the rounds the checkpoint's config differs: a user error, as one event
    cfg.federation.rounds = 3
    dump_config(cfg, tmp_path / "run3.toml")
    with pytest.raises(HFedMoEError, match="federation.rounds"):
        _serve(app_run_config(tmp_path / "run3.toml", out, tmp_path / "e3.jsonl", Resume(), None))
    last = _events(tmp_path / "e3.jsonl")[-1]
    assert last["kind"] == "error" and last["user"] is True and "federation.rounds" in last["message"]


@pytest.mark.parametrize("extra", [[], ["data.partition=natural-dirichlet", "data.clients_per_group=2", "data.min_client_size=2"],
                                   ["data.partition=dirichlet", "data.num_clients=5"], ["data.partition=iid"]])
def test_the_number_of_supernodes_is_the_number_of_clients_the_run_builds(tmp_path, extra):
    cfg = load_config(TINY, FAST + extra)
    assert num_clients(cfg) == len(Simulation(cfg, tmp_path / "s").fed.clients)


def test_sigterm_interrupts_like_ctrl_c_inside_the_block_only():
    import os
    import signal
    import time

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted by the handler at once
    assert signal.getsignal(signal.SIGTERM) is before
