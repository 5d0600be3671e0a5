"""Data that stays on the node: one file per client, one for the server.

The data owner's set-up step (:func:`write_partitions`, run once before a deployment, e.g. by
``examples/flower-deployment/deploy.py``) partitions the run's data exactly as the in-process
engine does and writes

* ``client_<cid>.npz``: that client's tokenised training and validation examples (nothing else),
  read only by the SuperNode whose node config names it (``data-path=...``);
* ``server.npz``: the test split and the public split (router / head warm-up), the label names and
  the number of clients: what the ServerApp evaluates on; a causal LM adds its held-out corpus
  (``data.heldout``, a public text) and the layout's counts. It holds no client's examples.

A causal LM's files hold the laid-out sequences (``data.layout``) with their loss masks, exactly
the in-process engine's: a node trains on its own and evaluates its validation perplexity when the
server asks (federated evaluation, ``client_val_perplexity``); the server computes the test and
held-out perplexity itself.

A node reports only sizes and label counts to the server (its hello reply); the server never
opens a client file. Each file carries a fingerprint of the config fields that shape the data
(``data.*``, the seed, the model, the task), so a file written for another config is refused,
naming it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hfedmoe.config import RunConfig, config_to_dict
from hfedmoe.data.batches import TokenizedTexts
from hfedmoe.data.lm_layout import LayoutStats
from hfedmoe.data.types import LabeledTexts
from hfedmoe.errors import HFedMoEError
from hfedmoe.federation.data import ClientData, FederationData, build_federation, load_run_dataset

FORMAT = "hfedmoe-node-data-1"


@dataclass
class NodeData:
    """What one node holds: its client's examples only (training first, then validation)."""

    tokens: TokenizedTexts
    train_idx: np.ndarray  # (n_train,) positions in tokens, in the partition's order
    val_idx: np.ndarray  # (n_val,)
    partition_id: int  # the client id the data owner gave it (a suggestion to the server)
    num_labels: int
    fingerprint: str

    @property
    def label_counts(self) -> list[int]:
        """Training examples per class, ``(num_labels,)``: metadata the node may share."""
        return np.bincount(self.tokens.labels[self.train_idx], minlength=self.num_labels).tolist()


@dataclass
class ServerData:
    """The server's own examples: the test split, then the public split."""

    tokens: TokenizedTexts
    texts: list[str]
    test_idx: np.ndarray  # (n_test,) positions in tokens
    public_idx: np.ndarray  # (n_public,)
    label_names: list[str]
    num_clients: int
    client_names: list[str]  # the natural group each client holds ("" for dirichlet | iid | shards)
    dataset_name: str
    fingerprint: str
    heldout: TokenizedTexts | None = None  # causal LM: the held-out corpus (data.heldout), else None
    layout: LayoutStats | None = None  # causal LM: what data.layout made of the whole corpus

    def federation(self, profiles: list[str]) -> FederationData:
        """The server's view of the federation: its own test and public examples, and clients that
        hold no examples here (their sizes arrive as metadata from their nodes)."""
        ds = LabeledTexts(self.texts, self.tokens.labels, self.label_names, name=self.dataset_name)
        empty = np.zeros(0, dtype=np.int64)
        clients = [ClientData(cid, empty, empty, profiles[cid % len(profiles)], self.client_names[cid])
                   for cid in range(self.num_clients)]
        return FederationData(ds, self.tokens, self.test_idx, clients, self.public_idx, self.heldout,
                              layout=self.layout)


def data_fingerprint(cfg: RunConfig) -> str:
    """A hash of the config fields that decide what the partitions hold."""
    d = config_to_dict(cfg)
    key = {"data": d["data"], "seed": cfg.seed, "model": d["model"].get("name"), "task": cfg.model.task}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pack(tokens: TokenizedTexts, idx: np.ndarray, prefix: str = "") -> dict[str, np.ndarray]:
    """The examples ``idx`` of ``tokens`` as flat arrays (a causal LM's loss masks and prompt
    lengths included), keys prefixed with ``prefix``."""
    rows = [int(i) for i in idx]
    lengths = np.array([len(tokens.input_ids[i]) for i in rows], dtype=np.int64)  # (n,)
    out = {"ids": np.array([t for i in rows for t in tokens.input_ids[i]], dtype=np.int64),  # (sum lengths,)
           "lengths": lengths, "labels": tokens.labels[np.asarray(rows, dtype=np.int64)]}
    if tokens.loss_masks is not None:
        out["masks"] = np.array([m for i in rows for m in tokens.loss_masks[i]], dtype=np.int8)  # (sum lengths,)
    if tokens.prompt_lengths is not None:
        out["prompt_lengths"] = np.array([tokens.prompt_lengths[i] for i in rows], dtype=np.int64)  # (n,)
    return {prefix + k: v for k, v in out.items()}


def _unpack(z: dict[str, np.ndarray], pad_id: int, prefix: str = "") -> TokenizedTexts:
    lengths = z[prefix + "lengths"]
    ends = np.cumsum(lengths)
    spans = list(zip((ends - lengths).tolist(), ends.tolist()))
    flat = z[prefix + "ids"]
    masks = z.get(prefix + "masks")
    prompts = z.get(prefix + "prompt_lengths")
    return TokenizedTexts([flat[s:e].tolist() for s, e in spans], z[prefix + "labels"].astype(np.int64), pad_id,
                          prompts.tolist() if prompts is not None else None,
                          [masks[s:e].tolist() for s, e in spans] if masks is not None else None)


def _write(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    tmp.replace(path)


def _read(path: str | Path, field: str) -> tuple[dict, dict[str, np.ndarray]]:
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError) as exc:
        raise HFedMoEError(f"{field}: expected a node-data file written by write_partitions, got {str(p)!r} "
                           f"({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise HFedMoEError(f"{field}: expected format {FORMAT!r}, got {meta.get('format')!r} in {p}")
    return meta, arrays


def write_partitions(cfg: RunConfig, out_dir: Path) -> list[Path]:
    """Partition the run's data as the in-process engine does and write one file per client plus
    ``server.npz`` into ``out_dir`` (the data owner's step, run once). Returns the client files."""
    from hfedmoe.federation.model import build_model

    dataset = load_run_dataset(cfg)
    _, tokenizer, _ = build_model(cfg.model, dataset.num_labels, cfg.seed)
    fed = build_federation(cfg, tokenizer, dataset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp, pad = data_fingerprint(cfg), int(fed.tokens.pad_id)
    paths = []
    for c in fed.clients:
        idx = np.concatenate([c.train_idx, c.val_idx])  # both sorted, as the in-process engine reads them
        meta = {"format": FORMAT, "partition_id": c.client_id, "num_train": len(c.train_idx),
                "num_labels": fed.num_labels, "pad_id": pad, "fingerprint": fp}
        paths.append(out / f"client_{c.client_id}.npz")
        _write(paths[-1], _pack(fed.tokens, idx), meta)
    idx = np.concatenate([fed.test_idx, fed.public_idx])
    lm = fed.layout is not None  # causal LM: idx index laid-out sequences, not the dataset's texts
    meta = {"format": FORMAT, "num_test": len(fed.test_idx), "label_names": list(fed.dataset.label_names),
            "num_clients": len(fed.clients), "client_names": [c.name for c in fed.clients], "pad_id": pad,
            "dataset": fed.dataset.name, "texts": [""] * len(idx) if lm else [fed.dataset.texts[int(i)] for i in idx],
            "fingerprint": fp, "layout": asdict(fed.layout) if lm else None}
    arrays = _pack(fed.tokens, idx)
    if fed.heldout is not None:
        arrays.update(_pack(fed.heldout, np.arange(len(fed.heldout)), "heldout_"))
    _write(out / "server.npz", arrays, meta)
    return paths


def load_node_data(path: str | Path) -> NodeData:
    """One client's partition (node config ``data-path``)."""
    meta, z = _read(path, "data-path")
    n = len(z["lengths"])
    k = int(meta["num_train"])
    return NodeData(_unpack(z, int(meta["pad_id"])), np.arange(k), np.arange(k, n), int(meta["partition_id"]),
                    int(meta["num_labels"]), str(meta["fingerprint"]))


def load_server_data(path: str | Path, cfg: RunConfig) -> ServerData:
    """The server's file (run config ``server-data``), checked against ``cfg``."""
    meta, z = _read(path, "server-data")
    if meta["fingerprint"] != data_fingerprint(cfg):
        raise HFedMoEError(f"server-data: expected partitions written for this run's data config (fingerprint "
                           f"{data_fingerprint(cfg)}), got {meta['fingerprint']} in {path}: write them again")
    n, k, pad = len(z["lengths"]), int(meta["num_test"]), int(meta["pad_id"])
    heldout = _unpack(z, pad, "heldout_") if "heldout_ids" in z else None
    layout = LayoutStats(**meta["layout"]) if meta.get("layout") else None
    return ServerData(_unpack(z, pad), list(meta["texts"]), np.arange(k), np.arange(k, n),
                      list(meta["label_names"]), int(meta["num_clients"]), list(meta["client_names"]),
                      str(meta["dataset"]), str(meta["fingerprint"]), heldout, layout)


__all__ = ["NodeData", "ServerData", "data_fingerprint", "load_node_data", "load_server_data",
           "write_partitions"]
