"""From a config to a federation: data, a fixed test set, client partitions with validation splits,
device profiles and expert budgets. Shared by the engines and the benchmark harness, so every
method of a benchmark sees identical partitions, budgets and profiles."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from hfedmoe.assets.datasets import load_dataset
from hfedmoe.config import RunConfig
from hfedmoe.data.batches import TokenizedTexts, tokenize
from hfedmoe.data.partition import partition
from hfedmoe.data.splits import client_val_split, train_test_split
from hfedmoe.data.types import LabeledTexts
from hfedmoe.errors import HFedMoEError

log = logging.getLogger(__name__)


@dataclass
class ClientData:
    client_id: int
    train_idx: np.ndarray  # indices into FederationData.tokens
    val_idx: np.ndarray
    profile: str


@dataclass
class FederationData:
    dataset: LabeledTexts
    tokens: TokenizedTexts
    test_idx: np.ndarray
    clients: list[ClientData]
    heldout: TokenizedTexts | None = None  # causal LM: held-out corpus for perplexity

    @property
    def num_labels(self) -> int:
        return self.dataset.num_labels

    def majority_rate(self) -> float:
        """Accuracy of always predicting the most frequent training label, on the test set."""
        train = np.concatenate([c.train_idx for c in self.clients])
        majority = np.bincount(self.dataset.labels[train], minlength=self.num_labels).argmax()
        return float((self.dataset.labels[self.test_idx] == majority).mean())


def load_run_dataset(cfg: RunConfig) -> LabeledTexts:
    d = cfg.data
    if d.dataset == "local":
        opts = {"path": d.path, "text_column": d.text_column, "label_column": d.label_column}
        if d.group_column:
            opts["group_column"] = d.group_column
        return load_dataset("local", **opts)
    return load_dataset(d.dataset)


def subsample(ds: LabeledTexts, max_examples: int, seed: int) -> LabeledTexts:
    """A stratified random subset (by label) of ``max_examples`` examples, in original order."""
    if not max_examples or max_examples >= len(ds):
        return ds
    _, keep = train_test_split(ds.labels, max_examples / len(ds), seed=seed)
    return ds.subset(np.sort(keep))


def build_federation(cfg: RunConfig, tokenizer, dataset: LabeledTexts | None = None) -> FederationData:
    d = cfg.data
    ds = subsample(dataset if dataset is not None else load_run_dataset(cfg), d.max_examples, cfg.seed)
    if d.partition in ("natural", "natural-dirichlet") and ds.groups is None:
        raise HFedMoEError(
            f"data.partition: '{d.partition}' needs a group column, but dataset {ds.name!r} has none "
            "(set data.group_column for a local file, or use dirichlet | iid | shards)"
        )
    try:
        train_idx, test_idx = train_test_split(ds.labels, d.test_fraction, seed=cfg.seed)
    except HFedMoEError as exc:
        raise HFedMoEError(f"data.{exc}") from None
    train_idx = np.sort(train_idx)
    num_clients: int | None = d.num_clients
    if d.partition in ("natural", "natural-dirichlet"):
        num_clients = None  # one client (natural) or clients_per_group clients per group
    parts = partition(
        ds.labels[train_idx],
        num_clients,
        d.partition,
        seed=cfg.seed,
        alpha=d.alpha,
        groups=None if ds.groups is None else ds.groups[train_idx],
        shards_per_client=d.shards_per_client,
        clients_per_group=d.clients_per_group,
        min_size=d.min_client_size if d.partition in ("dirichlet", "natural-dirichlet") else 1,
    )
    profiles = cfg.clients.profiles
    clients = []
    for cid, local in enumerate(parts):
        idx = train_idx[local]
        tr, va = client_val_split(idx, d.val_fraction, seed=cfg.seed + 1000 + cid)
        clients.append(ClientData(cid, np.sort(tr), np.sort(va), profiles[cid % len(profiles)]))
    heldout = None
    if cfg.model.task == "causal-lm":
        from hfedmoe.federation.lm_data import lm_tokens

        tokens, heldout = lm_tokens(cfg, tokenizer, ds)
    else:
        tokens = tokenize(tokenizer, ds.texts, ds.labels, d.max_length)
    log.info("dataset %s: %d examples, %d clients, test %d", ds.name, len(ds), len(clients), len(test_idx))
    return FederationData(ds, tokens, np.sort(test_idx), clients, heldout)
