"""A user's causal-LM corpus: plain text without labels, instruction/chat data with loss on the
responses only, documents chunked or packed to max_length."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hfedmoe.assets.local_corpus import load_local_corpus
from hfedmoe.data.batches import TokenizedTexts, collate
from hfedmoe.data.lm_docs import chat_documents, text_documents
from hfedmoe.data.lm_layout import layout_documents
from hfedmoe.errors import HFedMoEError


class _Tok:
    """Character tokenizer: bos=1, eos=2, pad=0, every character c -> ord(c) (no chat template)."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0
    eos_token = "</s>"
    chat_template = None

    def __call__(self, texts, add_special_tokens=False):
        enc = lambda t: [2] if t == "</s>" else [ord(c) for c in t.replace("</s>", "\x02")]  # noqa: E731
        return {"input_ids": [enc(t) for t in texts] if isinstance(texts, list) else enc(texts)}


def _ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_text_documents_mask_bos_and_prompt_only():
    docs = text_documents(_Tok(), ["ab"], ["P:"])
    assert docs == [([1, *_ids("P:"), *_ids("ab"), 2], [0, 0, 0, 1, 1, 1])]


def test_plain_chat_template_puts_the_loss_on_responses_only():
    conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}, {"role": "user", "content": "x"},
            {"role": "assistant", "content": "z"}]
    (ids, mask), = chat_documents(_Tok(), [conv], "plain", "response")
    # by hand: [bos] "System: s\n" "User: hi\n" "Assistant: " "yo" eos "\n" "User: x\n" "Assistant: " "z" eos "\n"
    parts = [([1], 0), (_ids("System: s\n"), 0), (_ids("User: hi\n"), 0), (_ids("Assistant: "), 0),
             (_ids("yo") + [2], 1), (_ids("\n"), 0), (_ids("User: x\n"), 0), (_ids("Assistant: "), 0),
             (_ids("z") + [2], 1), (_ids("\n"), 0)]
    assert ids == [t for p, _ in parts for t in p]
    assert mask == [m for p, m in parts for _ in p]
    assert [t for t, m in zip(ids, mask) if m] == [*_ids("yo"), 2, *_ids("z"), 2]
    (_, all_mask), = chat_documents(_Tok(), [conv], "plain", "all")
    assert all_mask == [0] + [1] * (len(ids) - 1)  # bos is never a target (nothing precedes it)


def test_tokenizer_template_needs_one():
    with pytest.raises(HFedMoEError, match="data.chat_template: .*'plain'"):
        chat_documents(_Tok(), [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]],
                       "tokenizer", "response")


def test_smollm2_chat_template_masks_all_but_the_assistant_turn():
    from hfedmoe.assets.models import load_smollm2_tokenizer

    tok = load_smollm2_tokenizer()
    conv = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "Four."}]
    (ids, mask), = chat_documents(tok, [conv], "tokenizer", "response")
    whole = tok.apply_chat_template(conv, tokenize=False)
    assert tok.decode(ids) == whole  # the segments add up to the template's rendering
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == "Four.<|im_end|>\n"
    head = tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
    assert tok.decode([t for t, m in zip(ids, mask) if not m]) == head


def test_layouts_by_hand():
    docs = [([1, 2, 3, 4, 5], [0, 1, 1, 1, 1]), ([6, 7], [0, 1]), ([8, 9, 10], [1, 1, 1])]
    sets = [np.array([0, 2]), np.array([1])]
    ids, masks, new_sets, st = layout_documents(docs, sets, 2, "truncate")
    assert ids == [[1, 2], [8, 9], [6, 7]] and masks == [[0, 1], [1, 1], [0, 1]]
    assert [s.tolist() for s in new_sets] == [[0, 1], [2]]
    assert (st.tokens_in, st.tokens_kept, st.documents_cut) == (10, 6, 2) and st.kept_share == pytest.approx(0.6)
    ids, masks, new_sets, st = layout_documents(docs, sets, 2, "chunk")
    # [5] and [10] are one-token tails: nothing to predict, dropped
    assert ids == [[1, 2], [3, 4], [8, 9], [6, 7]] and [s.tolist() for s in new_sets] == [[0, 1, 2], [3]]
    assert st.tokens_kept == 8
    ids, masks, new_sets, st = layout_documents(docs, sets, 3, "pack")
    # set 0 packs 1..5 then 8..10 (never doc 1, which is another split's)
    assert ids == [[1, 2, 3], [4, 5, 8], [9, 10], [6, 7]] and masks[1] == [1, 1, 1]
    assert [s.tolist() for s in new_sets] == [[0, 1, 2], [3]] and st.kept_share == 1.0


def test_collate_uses_loss_masks():
    data = TokenizedTexts([[1, 5, 6, 7], [1, 9]], np.zeros(2, dtype=np.int64), 0, [0, 0], [[0, 1, 0, 1], [0, 1]])
    assert collate(data, [0, 1])["labels"].tolist() == [[-100, 5, -100, 7], [-100, 9, -100, -100]]


def test_local_corpus_without_labels_with_groups_and_chat(tmp_path):
    text = tmp_path / "notes.csv"
    text.write_text("body,author\nfirst note,ann\nsecond note,bob\n")
    ds = load_local_corpus(text, text_column="body", group_column="author")
    assert ds.texts == ["first note", "second note"] and ds.groups.tolist() == ["ann", "bob"]
    assert ds.label_names == ["text"] and ds.conversations is None
    with pytest.raises(HFedMoEError, match="data.text_column: column 'text' not in notes.csv; available columns: body, author"):
        load_local_corpus(text)
    chat = tmp_path / "chat.jsonl"
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    chat.write_text(json.dumps({"messages": conv}) + "\n" + json.dumps({"messages": conv[:1]}) + "\n")
    with pytest.raises(HFedMoEError, match="data.messages_column: row 2 .*assistant"):
        load_local_corpus(chat, messages_column="messages")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    ds = load_local_corpus(pairs, prompt_column="instruction", response_column="output")
    assert ds.conversations == [conv] and ds.subset([0]).conversations == [conv]


def test_moefied_bert_with_every_expert_active_merges_exactly_into_a_dense_bert():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from hfedmoe.moe.build import moefy_bert
    from hfedmoe.moe.dense_merge import merge_moefied_bert

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=99, hidden_size=30, num_hidden_layers=2, num_attention_heads=3, intermediate_size=36,
                     num_labels=3, attn_implementation="eager")
    dense = BertForSequenceClassification(cfg).eval()
    ids = torch.randint(3, 99, (2, 7))
    with torch.no_grad():
        expected = dense(input_ids=ids).logits
        moe = moefy_bert(dense, num_experts=4, top_k=4, seed=0)
        for layer in moe.bert.encoder.layer:  # trained experts: no longer the original neurons
            layer.intermediate.experts.up_proj.add_(0.1 * torch.randn_like(layer.intermediate.experts.up_proj))
        routed = moe(input_ids=ids).logits
        merged = merge_moefied_bert(moe)
        assert type(merged.bert.encoder.layer[0].intermediate.dense).__name__ == "Linear"
        assert not hasattr(merged.config, "moe_top_k")
        torch.testing.assert_close(merged(input_ids=ids).logits, routed, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(routed, expected)  # the perturbation mattered: the test can fail
