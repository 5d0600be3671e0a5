"""The Flower ClientApp: one node = one client, training with the same
:func:`~hfedmoe.client.train_client` as the in-process engine.

A node with node config ``data-path`` reads only that file: its client's examples
(:mod:`hfedmoe.federation.node_data`), and tells the server their sizes and label counts. Without
it (the simulation engine's virtual nodes) a node rebuilds the federation's data from the run config
the server sends (seeded, so every node builds the same partition the server planned with). Either
is kept between messages of the same run. The server assigns each node its client (``client_id``
in every message); node config ``partition-id`` is only a suggestion it answers the hello with.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from hfedmoe.client import train_client
from hfedmoe.client.tasks import client_val_perplexities
from hfedmoe.config import RunConfig, config_from_dict, validate
from hfedmoe.engines.flower.codec import (
    CodecError,
    load_model_record,
    plan_from_json,
    plan_rule,
    update_to_record,
)
from hfedmoe.data.batches import TokenizedTexts
from hfedmoe.engines.shared import train_settings, val_accuracy
from hfedmoe.errors import HFedMoEError
from hfedmoe.federation.data import build_federation, load_run_dataset
from hfedmoe.federation.model import build_model, wrap_for_run
from hfedmoe.federation.node_data import NodeData, data_fingerprint, load_node_data
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
    tokens: TokenizedTexts
    splits: Callable[[int], tuple[np.ndarray, np.ndarray]]  # client id -> (train, val) positions in tokens
    num_clients: int | None  # None: the node's own data (the server names the client, any id)


_CACHE: dict[tuple[str, str], NodeState] = {}  # (run config text, data-path) -> what this node built


def _config(msg: Message) -> tuple[RunConfig, str]:
    text = str(msg.content.config_records["config"]["run_config"])
    cfg = config_from_dict(tomllib.loads(text))
    validate(cfg)
    return cfg, text


@lru_cache(maxsize=1)
def _own_data(path: str) -> NodeData:
    return load_node_data(path)


def _data_path(context: Context) -> str | None:
    path = context.node_config.get("data-path")
    return str(path) if path else None


def _node(msg: Message, context: Context) -> NodeState:
    """Model and data for this run, built once per process: with node config ``data-path`` the
    node's own partition file only; without it, the federation rebuilt from the run config (the
    simulation engine's virtual nodes)."""
    cfg, text = _config(msg)
    path = _data_path(context)
    key = (text, path or "")
    if key not in _CACHE:
        torch.set_num_threads(1)
        _CACHE.clear()
        if path is not None:
            own = _own_data(path)
            if own.fingerprint != data_fingerprint(cfg):
                raise HFedMoEError(f"data-path: expected a partition written for this run's data config, got "
                                   f"{path} (written for another one): write the partitions again")
            model, _, _ = build_model(cfg.model, own.num_labels, cfg.seed)
            tokens, splits, n = own.tokens, (lambda cid: (own.train_idx, own.val_idx)), None
        else:
            dataset = load_run_dataset(cfg)
            model, tokenizer, _ = build_model(cfg.model, dataset.num_labels, cfg.seed)
            fed = build_federation(cfg, tokenizer, dataset)
            tokens, n = fed.tokens, len(fed.clients)
            splits = lambda cid: (fed.clients[cid].train_idx, fed.clients[cid].val_idx)  # noqa: E731
        model, _ = setup_model(model, cfg)  # as the in-process engine: device, autocast, options
        _CACHE[key] = NodeState(cfg, wrap_for_run(model, cfg.model), tokens, splits, n)
    return _CACHE[key]


def _client(msg: Message, node: NodeState) -> int:
    """The client the server asks this node to act as (the server assigns it, see ``nodes.py``)."""
    cid = msg.content.config_records["config"]["client_id"]
    top = node.num_clients
    if not isinstance(cid, int) or isinstance(cid, bool) or cid < 0 or (top is not None and cid >= top):
        want = f"[0, {top - 1}]" if top is not None else ">= 0"
        raise HFedMoEError(f"client_id: expected an integer in {want}, got {cid!r}")
    return cid


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Suggest a partition to the server (node config ``partition-id``, else the one its own data
    file was written for; the server decides); a node with its own data (``data-path``) adds its
    sizes and label counts, never its examples."""
    pid = context.node_config.get("partition-id")
    info: dict[str, Any] = {"partition-id": pid} if isinstance(pid, (int, str)) else {}
    path = _data_path(context)
    if path is not None:
        own = _own_data(path)
        info.setdefault("partition-id", own.partition_id)
        info.update({"num-train": len(own.train_idx), "num-val": len(own.val_idx), "label-counts": own.label_counts})
    return Message(RecordDict({"hello": ConfigRecord(info)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global model (only the held experts in restrict mode), rebuild the plan, train."""
    node = _node(msg, context)
    cfg, mm = node.cfg, node.mm
    c = msg.content.config_records["config"]
    cid = _client(msg, node)
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
    train_idx, _ = node.splits(cid)
    upd = train_client(mm, cid, node.tokens, train_idx, plan, train_settings(cfg), seed=int(c["seed"]),
                       nonce=str(c.get("nonce", "")))
    return Message(update_to_record(upd), reply_to=msg)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    """Accuracy (a causal LM: perplexity) of the global model on this client's validation split."""
    node = _node(msg, context)
    cid = _client(msg, node)
    load_model_record(node.mm, msg.content.array_records["model"])
    _, val_idx = node.splits(cid)
    bs = node.cfg.train.eval_batch_size
    if node.cfg.model.task == "causal-lm":
        value = {"perplexity": client_val_perplexities(node.mm, node.tokens, [val_idx], bs)[0]}
    else:
        value = {"accuracy": float(val_accuracy(node.mm, node.tokens, val_idx, bs))}
    return Message(RecordDict({"eval": MetricRecord({"client_id": cid, **value})}), reply_to=msg)


__all__ = ["app"]
