"""``engine.name = "flower-sim"``: the run through Flower's Simulation Engine (``run_simulation``,
Ray backend): one virtual SuperNode per client (``partition-id`` = client id), ``num_cpus=1`` per
ClientApp, ``engine.num_actors`` of them at a time, offline, telemetry off.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hfedmoe
from hfedmoe.errors import HFedMoEError

log = logging.getLogger(__name__)


def quiet_offline_env() -> None:
    """Telemetry and usage statistics off; one torch thread in every Ray worker; workers import
    this very source tree (not another installed copy)."""
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


def run_flower_simulation(run: Any) -> Any:
    """Run a prepared :class:`~hfedmoe.engines.flower.serverapp.FlowerRun` (fresh or restored) on
    Flower's Simulation Engine, one virtual SuperNode per client; returns it."""
    quiet_offline_env()
    from flwr.simulation import run_simulation

    from hfedmoe.engines.flower.clientapp import app as client_app
    from hfedmoe.engines.flower.serverapp import make_server_app

    cfg = run.cfg
    num_clients = len(run.fed.clients)
    holder: dict[str, Any] = {}
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": int(min(cfg.engine.num_actors, num_clients)), "num_gpus": 0,
                      "include_dashboard": False, "logging_level": "warning", "log_to_driver": True},
    }
    run_simulation(server_app=make_server_app(run, holder), client_app=client_app,
                   num_supernodes=num_clients, backend_name="ray", backend_config=backend_config)
    if "error" in holder:
        raise holder["error"]
    if run.round < cfg.federation.rounds:
        raise HFedMoEError("engine.name = 'flower-sim': the Flower simulation stopped before the last round "
                           "(see the log above)")
    return run
