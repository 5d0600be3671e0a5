"""The deployment app's run config: dotted keys of its pyproject are config fields, typed by
Flower, and become overrides ("" = the preset's value); the overrides string still works."""

from __future__ import annotations

import tomllib

from hfedmoe.config import load_config
from hfedmoe.config.loading import help_rows
from hfedmoe.engines.flower.local_sim import APP_DIR
from hfedmoe.engines.flower.serverapp import run_overrides
from tests.flower.conftest import TINY


def _flat(d: dict, parent: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{parent}.{k}" if parent else k
        out.update(_flat(v, key) if isinstance(v, dict) else {key: v})
    return out


def test_the_apps_dotted_keys_are_config_fields_left_to_the_preset():
    app = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    rc = _flat(app["tool"]["flwr"]["app"]["config"])
    dotted = {k: v for k, v in rc.items() if "." in k}
    fields = {name for name, _, _ in help_rows()}
    assert len(dotted) >= 10 and set(dotted) <= fields and set(dotted.values()) == {""}
    assert run_overrides(rc) == []


def test_typed_run_config_values_become_overrides():
    rc = {"config": str(TINY), "federation.rounds": 2, "train.lr": 0.01, "data.partition": "iid",
          "method.name": "", "overrides": "clients.fixed_budgets=[1, 2];data.max_length=24", "resume": False}
    cfg = load_config(TINY, run_overrides(rc))
    assert (cfg.federation.rounds, cfg.train.lr, cfg.data.partition) == (2, 0.01, "iid")
    assert cfg.clients.fixed_budgets == [1, 2] and cfg.data.max_length == 24
    assert cfg.method.name == "hfedmoe"  # the preset's
