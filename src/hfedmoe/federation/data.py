"""From a config to a federation: data, a fixed test set, client partitions with validation splits,
device profiles and expert budgets. Shared by the engines and the benchmark harness, so every
method of a benchmark sees identical partitions, budgets and profiles."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from hfedmoe.assets.datasets import load_dataset
from hfedmoe.config import RunConfig
from hfedmoe.data.batches import TokenizedTexts, tokenize
from hfedmoe.data.lm_layout import LayoutStats
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
    name: str = ""  # the natural group a client holds ("" for dirichlet | iid | shards)


@dataclass
class FederationData:
    dataset: LabeledTexts
    tokens: TokenizedTexts
    test_idx: np.ndarray
    clients: list[ClientData]
    public_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # router warm-up
    heldout: TokenizedTexts | None = None  # causal LM: held-out corpus for perplexity
    warnings: list[str] = field(default_factory=list)  # about the data, with the field to change (logged)
    layout: LayoutStats | None = None  # causal LM: documents -> sequences (data.layout), tokens kept

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
    if d.dataset == "local" and cfg.model.task == "causal-lm":
        from hfedmoe.assets.local_corpus import load_local_corpus

        return load_local_corpus(d.path, d.text_column, d.group_column, d.prompt_column, d.response_column,
                                 d.messages_column, d.drop_invalid)
    if d.dataset == "local":
        opts = {"path": d.path, "text_column": d.text_column, "label_column": d.label_column,
                "drop_invalid": getattr(d, "drop_invalid", False)}
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


def _consolidate(cfg: RunConfig, train_idx: np.ndarray, groups: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Merge/drop small groups and cap their number (data.min_group_size, data.max_clients); logged."""
    from hfedmoe.data.groups import consolidate_groups

    d = cfg.data
    min_size, cap = getattr(d, "min_group_size", 1), getattr(d, "max_clients", 0)
    if groups is None or (min_size <= 1 and cap <= 0):
        return train_idx, groups
    if d.partition == "natural-dirichlet" and cap > 0:
        cap = max(1, cap // d.clients_per_group)  # max_clients counts clients, not groups
    plan = consolidate_groups(groups, min_size, cap)
    if plan.num_merged or plan.num_dropped_examples:
        log.warning("natural split by %s (data.min_group_size %d, data.max_clients %s): %s",
                    d.group_column or "group", min_size, d.max_clients or "no cap", plan.describe())
    if not plan.keep.any():
        raise HFedMoEError(
            f"data.min_group_size: expected at most the training examples of the data ({len(train_idx)}), "
            f"got {min_size}: every group was dropped"
        )
    return train_idx[plan.keep], plan.groups[plan.keep]


def _client_names(groups: np.ndarray | None, parts: list[np.ndarray], natural: bool) -> list[str]:
    if not natural or groups is None:
        return [""] * len(parts)
    return [str(groups[p[0]]) for p in parts]


def _user_terms(msg: str, natural: bool) -> str:
    """Partition errors in terms of the config's fields (``data.num_clients``), never internal names."""
    field, _, rest = msg.partition(": ")
    mapping = {"num_clients": "data.num_clients", "alpha": "data.alpha", "min_size": "data.min_client_size",
               "clients_per_group": "data.clients_per_group", "shards_per_client": "data.shards_per_client",
               "scheme": "data.partition", "groups": "data.group_column", "labels": "data.label_column",
               "partition": "data.partition"}
    if natural and field == "num_clients":
        field = "data.min_client_size" if "min_size" in rest else "data.clients_per_group"
        rest += ("; raise data.min_group_size to merge small groups, or lower data.clients_per_group / "
                 "data.min_client_size")
        rest = rest.replace("lower num_clients/min_size", "lower data.clients_per_group/data.min_client_size")
    rest = rest.replace("min_size", "data.min_client_size").replace("lower num_clients", "lower data.num_clients")
    return f"{mapping.get(field, field)}: {rest}" if rest else msg


@dataclass
class ClientSplit:
    """The rows each client holds, before any tokenising: what :func:`split_clients` returns."""

    ds: LabeledTexts  # the (subsampled) dataset
    train_idx: np.ndarray  # the rows clients may train on (test and public rows removed)
    test_idx: np.ndarray
    public_idx: np.ndarray
    parts: list[np.ndarray]  # client id -> its positions in train_idx
    names: list[str]  # client id -> its natural group ("" otherwise)
    natural: bool


def split_clients(cfg: RunConfig, dataset: LabeledTexts | None = None) -> ClientSplit:
    """Test, public and client rows of the run's data (no model, no tokenizer needed)."""
    d = cfg.data
    ds = subsample(dataset if dataset is not None else load_run_dataset(cfg), d.max_examples, cfg.seed)
    if d.partition in ("natural", "natural-dirichlet") and ds.groups is None:
        raise HFedMoEError(
            f"data.partition: '{d.partition}' needs a group column, but dataset {ds.name!r} has none "
            "(set data.group_column for a local file, or use dirichlet | iid | shards)"
        )
    num_classes = len(np.unique(ds.labels))
    if num_classes < 2 and cfg.model.task == "classification":  # a causal LM has no labels to learn
        raise HFedMoEError(
            f"data.label_column: expected at least 2 classes, got 1 ({ds.label_names[int(ds.labels[0])]!r}) "
            f"in {ds.name} ({len(ds)} examples)"
        )
    try:
        train_idx, test_idx = train_test_split(ds.labels, d.test_fraction, seed=cfg.seed)
    except HFedMoEError as exc:
        raise HFedMoEError(f"data.{exc}") from None
    train_idx = np.sort(train_idx)
    public_idx = np.zeros(0, dtype=np.int64)
    if d.public_fraction > 0:
        # a disjoint public split (stratified), removed before partitioning: no client trains on it
        try:
            rest, public = train_test_split(ds.labels[train_idx], d.public_fraction, seed=cfg.seed + 7)
        except HFedMoEError as exc:
            raise HFedMoEError(f"data.public_fraction: {exc}") from None
        public_idx = np.sort(train_idx[public])
        train_idx = np.sort(train_idx[rest])
    num_clients: int | None = d.num_clients
    groups = None if ds.groups is None else ds.groups[train_idx]
    if d.partition in ("natural", "natural-dirichlet"):
        num_clients = None  # one client (natural) or clients_per_group clients per group
        train_idx_before = train_idx
        train_idx, groups = _consolidate(cfg, train_idx, groups)
    natural = d.partition in ("natural", "natural-dirichlet")
    try:
        parts = partition(
            ds.labels[train_idx],
            num_clients,
            d.partition,
            seed=cfg.seed,
            alpha=d.alpha,
            groups=groups,
            shards_per_client=d.shards_per_client,
            clients_per_group=d.clients_per_group,
            min_size=d.min_client_size if d.partition in ("dirichlet", "natural-dirichlet") else 1,
        )
    except HFedMoEError as exc:
        raise HFedMoEError(_user_terms(str(exc), natural)) from None
    names = _client_names(groups, parts, natural)
    if natural and len(parts) < 2:
        _too_few_clients(cfg, len(np.unique(ds.groups[train_idx_before])) if ds.groups is not None else 0, names)
    return ClientSplit(ds, train_idx, test_idx, public_idx, parts, names, natural)


def build_federation(cfg: RunConfig, tokenizer, dataset: LabeledTexts | None = None) -> FederationData:
    d = cfg.data
    sp = split_clients(cfg, dataset)
    ds, train_idx, test_idx, public_idx, parts, names, natural = (
        sp.ds, sp.train_idx, sp.test_idx, sp.public_idx, sp.parts, sp.names, sp.natural)
    profiles = cfg.clients.profiles
    clients = []
    for cid, local in enumerate(parts):
        idx = train_idx[local]
        try:
            tr, va = client_val_split(idx, d.val_fraction, seed=cfg.seed + 1000 + cid)
        except HFedMoEError:
            where = f"client {cid} (group {names[cid]!r})" if names[cid] else f"client {cid}"
            fix = ("raise data.min_group_size to merge small groups, or set data.val_fraction = 0" if natural
                   else "lower data.num_clients or set data.val_fraction = 0")
            raise HFedMoEError(
                f"data.val_fraction: {where} has {len(idx)} training example(s), a validation split needs at "
                f"least 2; {fix}"
            ) from None
        clients.append(ClientData(cid, np.sort(tr), np.sort(va), profiles[cid % len(profiles)], names[cid]))
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 1_000_000 and d.max_length > limit:  # HF uses ~1e30 for "unknown"
        raise HFedMoEError(f"data.max_length: expected at most {limit} (the model's token limit), got {d.max_length}")
    heldout, layout, test_idx = None, None, np.sort(test_idx)
    if cfg.model.task == "causal-lm":  # sequences by data.layout; the splits stay apart by document
        from hfedmoe.federation.lm_data import lm_tokens

        sets = [test_idx, public_idx] + [i for c in clients for i in (c.train_idx, c.val_idx)]
        tokens, sets, layout, heldout = lm_tokens(cfg, tokenizer, ds, sets)
        test_idx, public_idx = sets[0], sets[1]
        for k, c in enumerate(clients):
            c.train_idx, c.val_idx = sets[2 + 2 * k], sets[3 + 2 * k]
        lossy = layout.layout == "truncate" and layout.kept_share < 0.9
        (log.warning if lossy else log.info)("%s", layout.describe(d.max_length))
    else:
        tokens = tokenize(tokenizer, ds.texts, ds.labels, d.max_length)
    log.info("dataset %s: %d examples, %d clients, test %d", ds.name, len(ds), len(clients), len(test_idx))
    fed = FederationData(ds, tokens, np.sort(test_idx), clients, public_idx, heldout, layout=layout)
    fed.warnings = _data_warnings(cfg, fed)
    for w in fed.warnings:
        log.warning("%s", w)
    return fed


def _too_few_clients(cfg: RunConfig, num_groups: int, names: list[str]) -> None:
    """A natural split that left fewer than 2 clients is no federation: an error with the fix."""
    d = cfg.data
    raise HFedMoEError(
        f"data.min_group_size: the natural split by {d.group_column or 'group'} left {len(names)} client"
        f"{'' if len(names) == 1 else 's'} ({num_groups} group{'' if num_groups == 1 else 's'} in the training data, "
        f"data.min_group_size {d.min_group_size}, data.max_clients {d.max_clients or 'no cap'}); a federation needs "
        "at least 2: lower data.min_group_size, raise data.max_clients, or use data.partition = 'dirichlet'")


def _data_warnings(cfg: RunConfig, fed: FederationData) -> list[str]:
    from hfedmoe.report.advice import data_warnings

    train = np.concatenate([c.train_idx for c in fed.clients]) if fed.clients else np.zeros(0, dtype=np.int64)
    lengths = np.fromiter((len(x) for x in fed.tokens.input_ids), dtype=np.int64, count=len(fed.tokens))
    chars = np.fromiter((len(t) for t in fed.dataset.texts), dtype=np.int64, count=len(fed.dataset))
    # causal LM: train_idx index the laid-out sequences (data.layout), not the dataset's rows, and
    # the layout reports its own kept share; class counts and truncation are classification's
    labels = fed.dataset.labels[train] if cfg.model.task == "classification" else np.zeros(0, dtype=np.int64)
    return data_warnings([len(c.train_idx) for c in fed.clients], [c.name for c in fed.clients], lengths,
                         cfg.data.max_length, chars, labels, list(fed.dataset.label_names), cfg.model.task)
