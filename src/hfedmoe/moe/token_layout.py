"""Which routed tokens are real, and the padded sequence length they came from (pure functions of
the attention masks a forward was given)."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def _own_masks(masks: Mapping[str, torch.Tensor | None], role: str,
               explicit: torch.Tensor | None) -> list[torch.Tensor]:
    """The call's mask, then the layer's own (the decoder's mask for decoder layers)."""
    key = "decoder_attention_mask" if role == "decoder" else "attention_mask"
    return [m for m in (explicit, masks.get(key)) if m is not None]


def mask_source(masks: Mapping[str, torch.Tensor | None], role: str, num_tokens: int,
                explicit: torch.Tensor | None) -> torch.Tensor | None:
    """The attention mask of ``num_tokens`` entries the token mask comes from (None: all real)."""
    return next((m for m in _own_masks(masks, role, explicit) if m.numel() == num_tokens), None)


def token_layout(masks: Mapping[str, torch.Tensor | None], role: str, num_tokens: int,
                 explicit: torch.Tensor | None, device) -> tuple[torch.Tensor, int | None]:
    """``(token_mask (T,), S)``: the real tokens, and the padded sequence length of the (B, S)
    attention mask they came from. Without a mask of T entries (e.g. Switch decoder tokens and
    no ``decoder_attention_mask``) every token is real and S = T / B from the batch size B of
    a mask that was seen (None when there is none, or B does not divide T)."""
    own = _own_masks(masks, role, explicit)
    source = next((m for m in own if m.numel() == num_tokens), None)
    if source is not None:
        seq_len = int(source.shape[-1]) if source.dim() == 2 else None
        return source.reshape(-1).to(device=device).bool(), seq_len
    seen = own + [m for m in masks.values() if m is not None]  # the encoder's, for decoder tokens
    batch = next((int(m.shape[0]) for m in seen if m.dim() == 2 and m.shape[0]), None)
    seq_len = num_tokens // batch if batch and num_tokens % batch == 0 else None
    return torch.ones(num_tokens, dtype=torch.bool, device=device), seq_len
