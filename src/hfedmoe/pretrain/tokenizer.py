"""A byte-level BPE tokenizer trained on the pretraining corpus (deterministic, offline)."""

from __future__ import annotations

from collections.abc import Iterable

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def train_bpe(texts: Iterable[str], vocab_size: int):
    """A ``PreTrainedTokenizerFast`` with byte-level BPE of ``vocab_size`` tokens learnt from
    ``texts``; ``<pad>`` = id 0, ``<s>`` = 1, ``</s>`` = 2. Encoding with special tokens gives
    ``<s> text </s>`` (classification reads the last real token); :func:`tokenize_lm` adds them
    itself. The same texts in the same order give the same tokenizer (single-threaded trainer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   model_max_length=4096)
