"""Causal-LM sequences of a run's corpus (prompt, user turns masked) and of its held-out corpus."""

from __future__ import annotations

import logging

import numpy as np

from hfedmoe.config import RunConfig
from hfedmoe.data.batches import TokenizedTexts
from hfedmoe.data.lm_docs import Document, chat_documents, text_documents
from hfedmoe.data.lm_layout import LayoutStats, layout_documents
from hfedmoe.data.types import LabeledTexts
from hfedmoe.errors import HFedMoEError

log = logging.getLogger(__name__)


def lm_documents(cfg: RunConfig, tokenizer, ds: LabeledTexts) -> list[Document]:
    """One ``(ids, loss mask)`` per example: conversations through ``data.chat_template``, texts as
    ``[bos] prompt text [eos]`` with ``data.prompt`` (``{group}`` = the example's group) masked."""
    d = cfg.data
    if ds.conversations is not None:
        return chat_documents(tokenizer, ds.conversations, d.chat_template, d.loss_on)
    prompts = None
    if d.prompt:
        groups = ds.groups if ds.groups is not None else [""] * len(ds)
        try:
            prompts = [d.prompt.format(group=g) for g in groups]
        except (KeyError, IndexError, ValueError) as exc:
            raise HFedMoEError(f"data.prompt: expected a text with at most the field {{group}}, got {d.prompt!r} ({exc})") from None
    docs = text_documents(tokenizer, ds.texts, prompts)
    if d.layout == "truncate" and prompts:
        longest = max((mask.index(1) if 1 in mask else len(mask) for _, mask in docs), default=0)
        if longest >= d.max_length:
            raise HFedMoEError(f"data.prompt: {longest} prompt tokens leave none of data.max_length={d.max_length}")
    return docs


def _to_tokens(ids: list[list[int]], masks: list[list[int]], tokenizer) -> TokenizedTexts:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TokenizedTexts(ids, np.zeros(len(ids), dtype=np.int64), int(pad_id), [0] * len(ids), masks)


def lm_tokens(cfg: RunConfig, tokenizer, ds: LabeledTexts, index_sets: list[np.ndarray]
              ) -> tuple[TokenizedTexts, list[np.ndarray], LayoutStats, TokenizedTexts | None]:
    """``(sequences, index_sets re-indexed into them, layout stats, held-out sequences or None)``.

    ``index_sets`` (test, public, each client's train and validation; indices into ``ds``) are laid
    out by ``data.layout``; the held-out corpus (WikiText-2 valid, first
    ``data.heldout_max_examples`` paragraphs, no prompt) is laid out the same way."""
    d = cfg.data
    docs = lm_documents(cfg, tokenizer, ds)
    ids, masks, new_sets, stats = layout_documents(docs, index_sets, d.max_length, d.layout)
    heldout = None
    if d.heldout == "wikitext2":
        from hfedmoe.assets.corpora import load_wikitext2

        held = text_documents(tokenizer, load_wikitext2("valid")[: d.heldout_max_examples])
        h_ids, h_masks, _, _ = layout_documents(held, [np.arange(len(held))], d.max_length, d.layout)
        heldout = _to_tokens(h_ids, h_masks, tokenizer)
    return _to_tokens(ids, masks, tokenizer), new_sets, stats, heldout
