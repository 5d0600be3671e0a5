"""Causal-LM documents from texts or conversations: ``(token ids, loss mask)`` per example.

Plain text: ``[bos] prompt text [eos]``, the loss on ``text [eos]`` (the prompt, e.g. the
outlet's name, is context, not a target).

Conversations (a list of ``{"role", "content"}`` messages, or one instruction/response pair
turned into a user and an assistant message) are rendered

* with the tokenizer's chat template (``data.chat_template = "tokenizer"``): every assistant turn
  is the difference between the conversation rendered up to it with ``add_generation_prompt``
  and rendered through it, so the loss mask covers exactly what the template writes for the
  assistant (its text and end-of-turn marker), never the generation prompt; or
* with the plain template (``"plain"``, for tokenizers without one)::

      [bos]System: ...\\nUser: ...\\nAssistant: <response>[eos]\\n...

  where the loss covers ``<response>[eos]``.

With ``loss_on = "all"`` every token of a conversation is a target.
"""

from __future__ import annotations

from collections.abc import Sequence

from hfedmoe.errors import HFedMoEError

Document = tuple[list[int], list[int]]  # (ids, loss mask), same length
ROLES = ("system", "user", "assistant")


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def text_documents(tokenizer, texts: Sequence[str], prompts: Sequence[str] | None = None) -> list[Document]:
    """``[bos] prompt text [eos]`` per text; the mask is 0 on bos and prompt, 1 on text and eos."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    body = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    heads = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else [[]] * len(body)
    docs = []
    for head, text in zip(heads, body):
        start, rest = bos + list(head), list(text) + eos
        docs.append((start + rest, [0] * len(start) + [1] * len(rest)))
    return docs


def _plain_segments(messages: Sequence[dict], eos_text: str) -> list[tuple[str, bool]]:
    out: list[tuple[str, bool]] = []
    for m in messages:
        role = m["role"]
        if role == "assistant":
            out += [("Assistant: ", False), (m["content"] + eos_text, True), ("\n", False)]
        else:
            out.append((f"{role.capitalize()}: {m['content']}\n", False))
    return out


def _template_segments(tokenizer, messages: Sequence[dict]) -> list[tuple[str, bool]]:
    """Segments ``(text, is_assistant)`` whose concatenation is the whole rendered conversation."""

    def render(msgs, gen: bool) -> str:
        return tokenizer.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=gen)

    out: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head, full = render(messages[:i], True), render(messages[: i + 1], False)
        if not (head.startswith(done) and full.startswith(head)):
            raise HFedMoEError(
                "data.chat_template: expected the tokenizer's chat template to render a conversation "
                "turn by turn (each rendering a prefix of the next), it does not; set data.chat_template = 'plain'"
            )
        out += [(head[len(done):], False), (full[len(head):], True)]
        done = full
    whole = render(messages, False)
    if not whole.startswith(done):
        raise HFedMoEError("data.chat_template: expected the rendered conversation to extend its turns; "
                           "set data.chat_template = 'plain'")
    out.append((whole[len(done):], False))
    return [s for s in out if s[0]]


def chat_documents(tokenizer, conversations: Sequence[Sequence[dict]], template: str, loss_on: str) -> list[Document]:
    """One document per conversation (see the module docstring)."""
    if template == "tokenizer" and not getattr(tokenizer, "chat_template", None):
        raise HFedMoEError(
            f"data.chat_template: expected a tokenizer with a chat template for 'tokenizer', got "
            f"{type(tokenizer).__name__} without one; set data.chat_template = 'plain'"
        )
    bos = [tokenizer.bos_token_id] if template == "plain" and tokenizer.bos_token_id is not None else []
    eos_text = (tokenizer.eos_token or "") if template == "plain" else ""
    docs = []
    for msgs in conversations:
        segments = _plain_segments(msgs, eos_text) if template == "plain" else _template_segments(tokenizer, msgs)
        ids, mask = list(bos), [0] * len(bos)
        for text, target in segments:
            piece = _encode(tokenizer, text)
            ids += piece
            mask += [1 if (target or loss_on == "all") else 0] * len(piece)
        docs.append((ids, mask))
    return docs
