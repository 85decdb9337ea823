"""Shared fixtures: paths to ../shared (skipped with a reason where it is absent) and loaded tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"  # the project's shared assets live beside the repo, never inside it
QWEN_TOKENIZER = SHARED / "tokenizers" / "qwen2.5"
GSM8K = SHARED / "data" / "gsm8k_alpaca.json"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests need the project's ../shared folder beside the repo")
    return path


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The Qwen2.5-compatible tokenizer from ../shared (18 MB: loaded once per session)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_need(QWEN_TOKENIZER))


@pytest.fixture(scope="session")
def gsm8k_path() -> Path:
    """GSM8K in the alpaca schema, from ../shared."""
    return _need(GSM8K)
