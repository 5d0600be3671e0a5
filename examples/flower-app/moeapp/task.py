"""Model and data of the app. Each node loads only its own partition of the data (node config
``partition-id`` / ``num-partitions``); the server only builds the model (the same seeded
initial weights) and, for ``evaluate_fn``, a test split that no partition contains."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from flwr.app import ArrayRecord, MetricRecord

from hfedmoe.assets.datasets import load_dataset
from hfedmoe.client import TrainSettings, evaluate
from hfedmoe.config import ModelConfig
from hfedmoe.data.batches import TokenizedTexts, tokenize
from hfedmoe.federation.model import build_model, wrap_for_run
from hfedmoe.moe import MoEModel

DATASET = "vader"  # bundled with hfedmoe: nothing is downloaded


@dataclass
class NodeData:
    tokens: TokenizedTexts  # this node's examples only
    train_idx: np.ndarray
    val_idx: np.ndarray


def load_model(seed: int, num_experts: int = 4, top_k: int = 2) -> MoEModel:
    """A tiny random MoE-BERT classifier (2 layers, ``num_experts`` experts each, top-``top_k``)."""
    cfg = ModelConfig(name="tiny-moe", num_experts=num_experts, top_k=top_k, tiny_hidden=36, tiny_layers=2)
    model, _, _ = build_model(cfg, _labels(), seed)
    return wrap_for_run(model, cfg)


@lru_cache(maxsize=1)
def _labels() -> int:
    return load_dataset(DATASET).num_labels


def _split(max_examples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test): a seeded shuffle of the first ``max_examples`` examples; 20% test."""
    n = min(max_examples, len(load_dataset(DATASET)))
    order = np.random.default_rng(seed).permutation(n)
    cut = n // 5
    return order[cut:], order[:cut]


def _tokens(idx: np.ndarray, max_length: int) -> TokenizedTexts:
    ds = load_dataset(DATASET)
    from hfedmoe.assets.models import load_minilm_tokenizer

    return tokenize(load_minilm_tokenizer(), [ds.texts[i] for i in idx], ds.labels[idx], max_length)


@lru_cache(maxsize=2)
def load_data(partition_id: int, num_partitions: int, max_examples: int = 400, max_length: int = 32,
              seed: int = 0) -> NodeData:
    """This node's partition (IID), tokenised; 10% of it for validation."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id: expected an integer in [0, {num_partitions - 1}], got {partition_id}")
    pool, _ = _split(max_examples, seed)
    mine = np.array_split(pool, num_partitions)[partition_id]
    n_val = max(1, len(mine) // 10)
    return NodeData(_tokens(mine, max_length), np.arange(n_val, len(mine)), np.arange(n_val))


def central_evaluate_fn(mm: MoEModel, max_examples: int = 400, max_length: int = 32, seed: int = 0):
    """``evaluate_fn`` for Strategy.start: accuracy of the global arrays on the test split."""
    _, test = _split(max_examples, seed)
    tokens = _tokens(test, max_length)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        del server_round
        mm.model.load_state_dict(arrays.to_torch_state_dict())
        res = evaluate(mm, tokens, np.arange(len(test)), 64)
        return MetricRecord({"accuracy": float(res["accuracy"])})

    return evaluate_fn


def train_settings(run_config: dict) -> TrainSettings:
    return TrainSettings(local_epochs=1, local_steps=int(run_config.get("local-steps", 4)),
                         batch_size=int(run_config.get("batch-size", 16)), lr=float(run_config.get("lr", 3e-3)),
                         trainable=("experts", "routers", "head"))
