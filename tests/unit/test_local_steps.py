"""``train.min_local_steps``: a client whose local epochs give fewer steps repeats its data up to
the minimum; ``local_steps`` still wins; the server's update checks expect the same count."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from hfedmoe.client.train import TrainPlan, TrainSettings, train_client
from hfedmoe.config import load_config
from hfedmoe.data.batches import TokenizedTexts, local_step_count
from hfedmoe.engines.guard import RoundGuard
from hfedmoe.engines.shared import train_settings
from hfedmoe.errors import HFedMoEError
from hfedmoe.moe import wrap
from hfedmoe.moe.build import tiny_model


@pytest.mark.parametrize(
    "n, batch, epochs, steps, minimum, expected",
    [
        (40, 16, 1, 0, 0, 3),  # ceil(40 / 16) = 3 batches
        (40, 16, 1, 0, 10, 10),  # raised to the minimum: the data repeats
        (40, 16, 4, 0, 10, 12),  # 4 epochs = 12 steps, already above 10
        (40, 16, 1, 5, 10, 5),  # local_steps wins over both
        (400, 16, 1, 0, 10, 25),  # a large client keeps its epoch
    ],
)
def test_step_count_by_hand(n, batch, epochs, steps, minimum, expected):
    assert local_step_count(n, batch, epochs, steps, minimum) == expected


def test_a_small_client_trains_the_minimum_and_the_guard_expects_it():
    rng = np.random.default_rng(0)
    ids = [rng.integers(3, 99, size=int(rng.integers(3, 9))).tolist() for _ in range(13)]
    data = TokenizedTexts(ids, rng.integers(0, 2, size=13).astype(np.int64), 0)
    mm = wrap(tiny_model("minilm_moe", seed=0))
    s = TrainSettings(min_local_steps=7, batch_size=5, lr=1e-3)  # 13 examples: 3 batches per epoch
    seen: list[int] = []
    upd = train_client(mm, 0, data, np.arange(13), TrainPlan(static_subsets=[[0]] * mm.num_layers), s, seed=0,
                       progress=lambda e: seen.append(e["steps"]))
    assert upd.metrics["steps"] == 7.0 and seen == [7] * 7
    guard = SimpleNamespace(settings=s)
    assert RoundGuard.steps(guard, SimpleNamespace(num_examples=13)) == 7


def test_config_field_reaches_the_settings_and_is_range_checked():
    assert train_settings(load_config(None, ["train.min_local_steps=64"])).min_local_steps == 64
    with pytest.raises(HFedMoEError, match="train.min_local_steps"):
        load_config(None, ["train.min_local_steps=-1"])
