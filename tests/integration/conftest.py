from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.toml"

# A few seconds per run: tiny model, 160 examples, 2 local steps per client.
FAST = ["data.max_examples=160", "train.local_steps=2", "train.local_epochs=1", "data.max_length=24"]


@pytest.fixture
def tiny_config() -> Path:
    return TINY
