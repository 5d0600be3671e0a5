"""Causal-LM tokens of a run's corpus (prompt masked) and of its held-out corpus."""

from __future__ import annotations

from hfedmoe.config import RunConfig
from hfedmoe.data.batches import TokenizedTexts, tokenize_lm
from hfedmoe.data.types import LabeledTexts
from hfedmoe.errors import HFedMoEError


def lm_tokens(cfg: RunConfig, tokenizer, ds: LabeledTexts) -> tuple[TokenizedTexts, TokenizedTexts | None]:
    """``(corpus tokens, held-out tokens or None)``. ``data.prompt`` (``{group}`` = the example's
    group) goes before every text and is masked from the loss; the held-out corpus (WikiText-2
    valid, first ``data.heldout_max_examples`` paragraphs) has no prompt."""
    d = cfg.data
    prompts = None
    if d.prompt:
        groups = ds.groups if ds.groups is not None else [""] * len(ds)
        try:
            prompts = [d.prompt.format(group=g) for g in groups]
        except (KeyError, IndexError, ValueError) as exc:
            raise HFedMoEError(f"data.prompt: expected a text with at most the field {{group}}, got {d.prompt!r} ({exc})") from None
    try:
        tokens = tokenize_lm(tokenizer, ds.texts, d.max_length, prompts)
    except ValueError as exc:
        raise HFedMoEError(str(exc)) from None
    heldout = None
    if d.heldout == "wikitext2":
        from hfedmoe.assets.corpora import load_wikitext2

        heldout = tokenize_lm(tokenizer, load_wikitext2("valid")[: d.heldout_max_examples], d.max_length)
    return tokens, heldout
