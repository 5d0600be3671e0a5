"""The benchmark MoE presets (``hfedmoe pretrain --preset NAME``) and where they are cached."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from hfedmoe.errors import HFedMoEError

#: The formal, public text the benchmark MoEs are pretrained on. The other four domains of
#: domains8 (health tweets, SMS, movie and Amazon reviews: informal, private-like text) are never
#: seen in pretraining: they are what federated fine-tuning has to learn, so training the right
#: experts matters (on text the model was pretrained on, fine-tuning moved test perplexity by
#: under 1% and the gradient oracle tied random choice).
PUBLIC_DOMAINS: tuple[str, ...] = ("wiki", "business", "sport", "questions")

#: Bump when the corpus, the tokenizer recipe or the training loop changes what a preset produces.
RECIPE_VERSION = 2


@dataclass(frozen=True)
class PretrainPreset:
    """One from-scratch MoE causal LM and its training recipe."""

    family: str  # "mixtral" (top-k renormalised) | "qwen3_moe" (norm_topk_prob = False: Switch-style)
    hidden: int
    layers: int
    heads: int
    num_experts: int
    expert_width: int
    top_k: int
    vocab_size: int
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    aux_loss_coef: float
    warmup_steps: int
    checkpoint_every: int
    per_domain_pretrain: int  # pretraining units per domain (corpus cap)
    eval_blocks: int  # held-out blocks per domain for the report
    domains: tuple[str, ...] = PUBLIC_DOMAINS  # what it is pretrained on (the report covers all 8)


PRESETS: dict[str, PretrainPreset] = {
    # 6.1M parameters (24.5 MB fp32): 800 steps of 16 x 64 tokens.
    "top2-16": PretrainPreset("mixtral", 192, 4, 4, 16, 128, 2, 4096, 800, 16, 64, 2e-3, 0.02, 50, 100,
                              6000, 24),
    # Switch-style: top-1 of 32 experts, the gate weight is the router probability (not renormalised).
    "switch-32": PretrainPreset("qwen3_moe", 192, 4, 4, 32, 128, 1, 4096, 800, 16, 64, 2e-3, 0.02, 50, 100,
                                6000, 24),
    # Tests only: seconds.
    "test-tiny": PretrainPreset("mixtral", 32, 2, 2, 4, 16, 2, 300, 6, 4, 32, 3e-3, 0.02, 2, 3, 60, 2),
}


def get_preset(name: str, field: str = "model.preset") -> PretrainPreset:
    if name not in PRESETS:
        raise HFedMoEError(f"{field}: expected one of {' | '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]


def cache_root() -> Path:
    """``$HFEDMOE_CACHE`` or ``~/.cache/hfedmoe``."""
    return Path(os.environ.get("HFEDMOE_CACHE") or Path.home() / ".cache" / "hfedmoe").expanduser()


def preset_key(name: str, seed: int) -> str:
    """A short hash of everything that decides the weights: preset, seed, recipe version."""
    blob = json.dumps({"preset": asdict(get_preset(name)), "seed": seed, "recipe": RECIPE_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def preset_dir(name: str, seed: int = 0, root: Path | None = None) -> Path:
    """Where preset ``name`` pretrained with ``seed`` lives: ``ROOT/pretrained/NAME-sSEED-HASH``."""
    return (root or cache_root()) / "pretrained" / f"{name}-s{seed}-{preset_key(name, seed)}"


def pretrained_path(name: str, seed: int = 0) -> Path:
    """The finished checkpoint directory of a preset, or a one-line error saying how to build it."""
    path = preset_dir(name, seed)
    if not (path / "pretrain.json").is_file():
        raise HFedMoEError(
            f"model.preset: no pretrained {name!r} (seed {seed}) in {path.parent}; build it once with "
            f"`hfedmoe pretrain --preset {name}` (cached; HFEDMOE_CACHE moves the cache)")
    return path
