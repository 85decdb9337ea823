"""Shared fixtures only: paths to ../shared (skipped with a reason where it is absent), loaded tokenizers, the small
demo's assets, one CPU thread; and the check of the `slow` marker (tests/markers.py). Helpers are in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import GSM8K, QWEN_TOKENIZER, demo_config

# pytester: tests/test_markers.py runs pytest on test files of its own. markers: the check of the `slow` marker
# (tests/markers.py), a plugin rather than hooks of this conftest, whose pytest_fixture_setup would not see the
# session-scoped fixtures (their node, the session, is not under tests/).
pytest_plugins = ["pytester", "markers"]


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


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A folder with the small demo's data and tiny base model, built once per test session."""
    from sft.studies.demo import ensure_demo_assets

    root = tmp_path_factory.mktemp("demo")
    ensure_demo_assets(demo_config(root).demo)
    return root


@pytest.fixture(scope="session")
def demo_tokenizer(demo_root):
    """The demo's byte-level BPE tokenizer (sft.studies.tiny_model.train_tokenizer on the small demo's rows): offline."""
    from sft.models.tokenizer import load_tokenizer

    return load_tokenizer(demo_root / "model/demo/base")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from more CPU threads, and on a busy machine threads waiting on each
    other make every step several times slower; the setting is restored after the module."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
