from __future__ import annotations

from pathlib import Path

import pytest

from tests.training._data import rows, write_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds"), rows())


@pytest.fixture(scope="session")
def tokenizer():
    from training.tiny import train_tokenizer

    texts = [m["content"] for r in rows() for m in r["messages"]]
    return train_tokenizer(texts, vocab_size=400)
