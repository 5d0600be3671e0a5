"""The Flower ClientApp sets its model up as the in-process engine does (device, mixed precision,
combine rule, training options): with ``runtime.dtype = bfloat16`` its forward runs under
autocast and computes exactly what the in-process engine's model computes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from flwr.app import ConfigRecord, RecordDict

from hfedmoe.config import config_to_dict, load_config
from hfedmoe.engines.flower import clientapp
from hfedmoe.engines.simulation import Simulation

from .conftest import FAST, TINY


def _logits_and_linear_dtypes(model, batch) -> tuple[torch.Tensor, set[torch.dtype]]:
    """The model's logits on ``batch`` and the dtypes its Linear layers computed in."""
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            logits = model.eval()(**batch).logits.float()
    finally:
        for h in hooks:
            h.remove()
    return logits, seen


def test_the_clientapp_model_runs_under_the_same_autocast_as_the_in_process_engine(monkeypatch):
    import tomli_w

    monkeypatch.setattr(clientapp, "_CACHE", {})
    cfg = load_config(TINY, FAST + ["runtime.dtype=bfloat16", "model.combine=topk-prob"])
    # what _node reads of the server's message: its content (a Message needs a running Flower task)
    msg = SimpleNamespace(content=RecordDict({"config": ConfigRecord({"run_config": tomli_w.dumps(config_to_dict(cfg))})}))
    node = clientapp._node(msg, SimpleNamespace(node_config={}))  # no data-path: the virtual nodes' path
    sim = Simulation(cfg, Path("/nonexistent-unused"))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 90, (3, 9), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    flower_logits, flower_dtypes = _logits_and_linear_dtypes(node.mm.model, batch)
    sim_logits, sim_dtypes = _logits_and_linear_dtypes(sim.mm.model, batch)
    assert flower_dtypes == sim_dtypes == {torch.bfloat16}  # autocast on both paths
    assert torch.equal(flower_logits, sim_logits)
    assert all(p.dtype == torch.float32 for p in node.mm.model.parameters())  # fp32 master weights
    routers = [m for m in node.mm.model.modules() if hasattr(m, "combine")]
    assert routers and all(m.combine == "topk-prob" for m in routers)  # the run's combine rule too
