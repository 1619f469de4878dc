"""How ftbot starts its worker processes (training, evaluation generation): one environment, one working directory.

A worker is a fresh ``python -m trainers.…`` process. It must reach the same database as its parent, print its
output unbuffered into its log file, and find ftbot's packages even from a source checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

from storage.config import DATABASE_URL_VARIABLE

# The directory that holds the ``trainers`` package: the worker's working directory, so ``-m trainers…`` resolves.
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def worker_environment(database_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's environment plus ``extra``, pointed at ``database_url``, with unbuffered output.

    Tokenizer threads are off unless the caller set them: the workers fork data loaders, and HF tokenizers warn
    (and can deadlock) when their thread pool is forked.
    """
    environment = {**os.environ, **(extra or {}), DATABASE_URL_VARIABLE: database_url, "PYTHONUNBUFFERED": "1"}
    environment.setdefault("TOKENIZERS_PARALLELISM", "false")
    return environment
