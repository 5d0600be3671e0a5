"""Help texts render as written, and a typo'd config field names the closest real one."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hfedmoe.cli.app import app
from hfedmoe.config import load_config
from hfedmoe.errors import HFedMoEError


@pytest.mark.parametrize("command", ["run", "bench", "generate", "predict"])
def test_help_shows_defaults_without_escapes(command):
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0 and "\\[" not in result.stdout
    assert "[default: " in result.stdout or "[required]" in result.stdout


@pytest.mark.parametrize("override,suggestion", [
    ("train.lrr=0.1", "did you mean train.lr?"),
    ("train.rounds=3", "did you mean federation.rounds?"),  # the right name in another section
    ("data.min_groupsize=3", "did you mean data.min_group_size?"),
    ("federaton.rounds=3", "did you mean federation?"),
])
def test_typo_names_the_closest_field(override, suggestion):
    with pytest.raises(HFedMoEError) as exc:
        load_config(None, [override])
    assert suggestion in str(exc.value) and "(known: " in str(exc.value)


def test_no_suggestion_for_a_name_like_nothing():
    with pytest.raises(HFedMoEError) as exc:
        load_config(None, ["data.zzz=1"])
    assert "did you mean" not in str(exc.value)
