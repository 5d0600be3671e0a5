"""The Flower ClientApp: one node = one client, training with the same
:func:`~hfedmoe.client.train_client` as the in-process engine.

A node builds the model and the federation's data from the run config the server sends (seeded, so
every node builds the same partition the server planned with) and keeps them between messages of
the same run. The server assigns each node its client (``client_id`` in every message); node
config ``partition-id`` is only a suggestion it answers the server's hello with.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from hfedmoe.client import train_client
from hfedmoe.config import RunConfig, config_from_dict, validate
from hfedmoe.engines.flower.codec import (
    CodecError,
    load_model_record,
    plan_from_json,
    plan_rule,
    update_to_record,
)
from hfedmoe.engines.shared import client_val_accuracy, train_settings
from hfedmoe.errors import HFedMoEError
from hfedmoe.federation.data import FederationData, build_federation, load_run_dataset
from hfedmoe.federation.model import build_model, wrap_for_run
from hfedmoe.federation.runtime import setup_model
from hfedmoe.methods import make_method
from hfedmoe.methods.base import ClientInfo
from hfedmoe.moe import MoEModel

log = logging.getLogger(__name__)

app = ClientApp()


@dataclass
class NodeState:
    cfg: RunConfig
    mm: MoEModel
    fed: FederationData


_CACHE: dict[str, NodeState] = {}  # run config text -> what this node built for it


def _config(msg: Message) -> tuple[RunConfig, str]:
    text = str(msg.content.config_records["config"]["run_config"])
    cfg = config_from_dict(tomllib.loads(text))
    validate(cfg)
    return cfg, text


def _node(msg: Message) -> NodeState:
    cfg, text = _config(msg)
    if text not in _CACHE:
        torch.set_num_threads(1)
        _CACHE.clear()
        dataset = load_run_dataset(cfg)
        model, tokenizer, _ = build_model(cfg.model, dataset.num_labels, cfg.seed)
        model, _ = setup_model(model, cfg)  # as the in-process engine: device, autocast, options
        _CACHE[text] = NodeState(cfg, wrap_for_run(model, cfg.model), build_federation(cfg, tokenizer, dataset))
    return _CACHE[text]


def _client(msg: Message, fed: FederationData) -> int:
    """The client the server asks this node to act as (the server assigns it, see ``nodes.py``)."""
    cid = msg.content.config_records["config"]["client_id"]
    if not isinstance(cid, int) or not 0 <= cid < len(fed.clients):
        raise HFedMoEError(f"client_id: expected an integer in [0, {len(fed.clients) - 1}], got {cid!r}")
    return cid


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Suggest a partition to the server (node config ``partition-id``; the server decides)."""
    pid = context.node_config.get("partition-id")
    info = ConfigRecord({"partition-id": pid} if isinstance(pid, (int, str)) else {})
    return Message(RecordDict({"hello": info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global model (only the held experts in restrict mode), rebuild the plan, train."""
    node = _node(msg)
    cfg, mm, fed = node.cfg, node.mm, node.fed
    del context
    c = msg.content.config_records["config"]
    cid = _client(msg, fed)
    try:
        load_model_record(mm, msg.content.array_records["model"])
    except CodecError as exc:
        raise HFedMoEError(f"train: {exc}") from None
    info = ClientInfo(cid, int(c["budget"]), int(c["num_examples"]), str(c["profile"]))
    round_idx = int(c["round"])
    local = None
    if plan_rule(str(c["plan"])) is not None:
        method = make_method(cfg.method)
        method.seed = cfg.seed
        local = method.plan(mm, info, round_idx)
    plan = plan_from_json(str(c["plan"]), local)
    upd = train_client(mm, cid, fed.tokens, fed.clients[cid].train_idx, plan, train_settings(cfg), seed=int(c["seed"]),
                      nonce=str(c.get("nonce", "")))
    return Message(update_to_record(upd), reply_to=msg)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    """Accuracy of the global model on this client's validation split."""
    del context
    node = _node(msg)
    cid = _client(msg, node.fed)
    load_model_record(node.mm, msg.content.array_records["model"])
    acc = client_val_accuracy(node.mm, node.fed, cid, node.cfg.train.eval_batch_size)
    return Message(RecordDict({"eval": MetricRecord({"client_id": cid, "accuracy": float(acc)})}), reply_to=msg)


__all__ = ["app"]
