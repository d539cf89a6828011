"""Shared fixtures. Tests run offline on the bundled models and the built-in corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WIKITEXT_VALID = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2" / "valid.txt"


@pytest.fixture(scope="session")
def wikitext_valid() -> Path:
    """The real WikiText-2 validation split from ../shared (skip when absent)."""
    if not WIKITEXT_VALID.exists():
        pytest.skip(f"{WIKITEXT_VALID} not present")
    return WIKITEXT_VALID


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from ffenv.lm.models import BUNDLED_DIR as ZOO_DIR

    return AutoTokenizer.from_pretrained(str(ZOO_DIR / "tokenizer"))
