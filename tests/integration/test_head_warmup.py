"""`model.head_warmup_steps`: the task head learns on the labelled public split before federation;
nothing else moves, and with `train.trainable` without "head" federated training leaves it fixed."""

import pytest
import torch

from hfedmoe.client.train import trainable_dense_names
from hfedmoe.config import load_config
from hfedmoe.engines.simulation import Simulation
from hfedmoe.errors import HFedMoEError

from .conftest import TINY

BASE = ["data.max_examples=240", "train.local_steps=3", "data.max_length=24", "federation.rounds=1",
        "data.public_fraction=0.25", 'train.trainable=["experts", "routers"]']


def _state(sim):
    return {n: p.detach().clone() for n, p in sim.mm.model.named_parameters()}


def test_head_warmup_changes_only_the_head_and_federation_keeps_it(tmp_path):
    cold = Simulation(load_config(TINY, BASE), tmp_path / "cold")
    warm = Simulation(load_config(TINY, BASE + ["model.head_warmup_steps=30", "model.head_warmup_lr=1e-3"]),
                      tmp_path / "warm")
    head = set(trainable_dense_names(warm.mm, ["head"]))
    assert head
    before, after = _state(cold), _state(warm)
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same != (name in head), name  # the head moved, everything else is bit-for-bit the same
    w = warm.warmup_metrics
    assert w["head_public_loss_after"] < w["head_public_loss_before"]
    assert cold.warmup_metrics == {}
    warm.run()
    trained = _state(warm)
    for name in head:
        assert torch.equal(trained[name], after[name]), name  # "head" not trainable: fixed in federation
    assert any(not torch.equal(trained[n], after[n]) for n in after if n not in head)  # experts/routers did train


@pytest.mark.parametrize("extra, field", [
    (["data.public_fraction=0.0", "model.head_warmup_steps=5"], "data.public_fraction"),
    (["model.head_warmup_steps=-1"], "model.head_warmup_steps"),
    (["model.head_warmup_lr=0"], "model.head_warmup_lr"),
])
def test_bad_head_warmup_settings_name_the_field(extra, field):
    with pytest.raises(HFedMoEError, match=field.replace(".", r"\.")):
        load_config(TINY, [*BASE, *extra])
