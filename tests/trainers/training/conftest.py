"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def local_env(monkeypatch, tmp_path, tiny_model_dir) -> Path:
    """A fresh ftbot home, no hub: the tiny model's directory is the base model."""
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tiny_model_dir
