"""Causal-LM documents -> training sequences of at most ``max_length`` tokens.

A *document* is ``(ids, loss_mask)``: its token ids (bos, prompt, text, eos already in place) and
a 0/1 mask marking the tokens that are loss targets. Three layouts (``data.layout``):

* ``truncate``: each document cut to its first ``max_length`` tokens (the rest is lost);
* ``chunk``: each document cut into consecutive pieces of ``max_length`` tokens (the last piece
  shorter); nothing is lost except a last piece of a single token (nothing to predict);
* ``pack``: the documents of one index set (a client's training split, the test set, ...)
  concatenated in order and cut into blocks of ``max_length`` tokens: no padding, documents
  attend across their boundaries (the usual packing of LM pre-training). Packing never mixes
  two index sets, so the train / validation / test separation by document is kept.

Pure: lists in, lists out; the share of tokens kept is returned, not logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LAYOUTS = ("truncate", "chunk", "pack")


@dataclass
class LayoutStats:
    """What a layout kept: tokens of the documents laid out, and of the sequences made."""

    layout: str
    num_documents: int
    num_sequences: int
    tokens_in: int
    tokens_kept: int
    documents_cut: int  # truncate: documents longer than max_length (their tail was lost)

    @property
    def kept_share(self) -> float:
        return self.tokens_kept / self.tokens_in if self.tokens_in else 1.0

    def describe(self, max_length: int) -> str:
        line = (f"data.layout = {self.layout}: {self.num_documents} documents -> {self.num_sequences} sequences "
                f"of <= {max_length} tokens, {100 * self.kept_share:.1f}% of {self.tokens_in} tokens kept")
        if self.layout == "truncate" and self.documents_cut:
            line += (f" ({self.documents_cut} documents cut; data.layout = 'chunk' or 'pack' keeps every token, "
                     "or raise data.max_length)")
        return line


def _pieces(ids: list[int], mask: list[int], max_length: int, whole: bool) -> list[tuple[list[int], list[int]]]:
    """``ids`` cut into consecutive pieces of ``max_length`` (only the first when not ``whole``);
    a piece of one token predicts nothing and is dropped."""
    starts = range(0, len(ids), max_length) if whole else [0]
    out = [(ids[s:s + max_length], mask[s:s + max_length]) for s in starts]
    return [p for p in out if len(p[0]) >= 2 or (not whole and p[0])]


def layout_documents(
    docs: Sequence[tuple[list[int], list[int]]],
    index_sets: Sequence[np.ndarray],
    max_length: int,
    layout: str,
) -> tuple[list[list[int]], list[list[int]], list[np.ndarray], LayoutStats]:
    """Lay out the documents of each index set (indices into ``docs``; the sets are disjoint).

    Returns ``(ids, loss_masks, new_index_sets, stats)``: the sequences of every set one after the
    other, and for each set the (sorted) indices of its sequences in ``ids``. Documents in no set
    are not laid out (and not counted in ``stats``).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"data.layout: expected one of {' | '.join(LAYOUTS)}, got {layout!r}")
    if max_length < 2:
        raise ValueError(f"data.max_length: expected an integer >= 2, got {max_length}")
    ids_out: list[list[int]] = []
    masks_out: list[list[int]] = []
    new_sets: list[np.ndarray] = []
    tokens_in = kept = cut = num_docs = 0
    for idx in index_sets:
        start = len(ids_out)
        members = [docs[int(i)] for i in np.asarray(idx, dtype=np.int64)]
        num_docs += len(members)
        tokens_in += sum(len(d[0]) for d in members)
        if layout == "pack":
            flat_ids = [t for d in members for t in d[0]]
            flat_mask = [m for d in members for m in d[1]]
            pieces = _pieces(flat_ids, flat_mask, max_length, whole=True) if flat_ids else []
        else:
            pieces = [p for d in members for p in _pieces(d[0], d[1], max_length, whole=layout == "chunk")]
            cut += sum(len(d[0]) > max_length for d in members) if layout == "truncate" else 0
        for piece_ids, piece_mask in pieces:
            ids_out.append(piece_ids)
            masks_out.append(piece_mask)
            kept += len(piece_ids)
        new_sets.append(np.arange(start, len(ids_out), dtype=np.int64))
    stats = LayoutStats(layout, num_docs, len(ids_out), tokens_in, kept, cut)
    return ids_out, masks_out, new_sets, stats
