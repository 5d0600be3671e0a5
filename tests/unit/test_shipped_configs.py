"""Every shipped run config (configs/*.toml that is not a bench file) validates as it is."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hfedmoe.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RUN_FILES = sorted(f for f in CONFIGS.glob("*.toml") if "methods" not in tomllib.loads(f.read_text()))


def test_there_are_run_configs():
    assert {f.name for f in RUN_FILES} >= {"default.toml", "tiny.toml", "user-data.toml", "llm.toml"}


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda p: p.name)
def test_shipped_run_config_validates(path):
    load_config(path)


def test_user_data_keeps_the_round_validation_chooses():
    # label skew swings the global model between classes (docs/label-skew.md): a user's own data
    # ends with the best round on the clients' validation splits, the demo and tests with the last
    assert load_config(CONFIGS / "user-data.toml").federation.select_model == "best-val"
    assert load_config(CONFIGS / "default.toml").federation.select_model == "last"
