"""moeapp: the ClientApp. Model and data are built once per node process and reused."""

from __future__ import annotations

from functools import lru_cache

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from hfedmoe.engines.flower.moe_strategy import evaluate_reply, train_reply
from moeapp.task import load_data, load_model, train_settings

app = ClientApp()


@lru_cache(maxsize=1)
def _model(seed: int):
    return load_model(seed)


def _node(context: Context):
    rc, nc = context.run_config, context.node_config
    data = load_data(int(nc["partition-id"]), int(nc["num-partitions"]), int(rc.get("max-examples", 400)),
                     seed=int(rc.get("seed", 0)))
    return _model(int(rc.get("seed", 0))), data


@app.train()
def train(msg: Message, context: Context) -> Message:
    mm, data = _node(context)
    return train_reply(msg, mm, data.tokens, data.train_idx, train_settings(dict(context.run_config)))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    mm, data = _node(context)
    return evaluate_reply(msg, mm, data.tokens, data.val_idx)
