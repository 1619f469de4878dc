"""Writing stored examples and pairs out: OpenAI JSONL, TRL preference rows, a Hugging Face dataset.

Everything streams from the database (constant memory). ``datasets`` is imported only by
``save_hf_dataset`` so the bot and the CLI start fast.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from storage.db import Database
from storage.errors import DataFileError
from storage.examples import count_by_status, iter_records


def jsonl_line(record: dict[str, Any]) -> str:
    """One JSONL line as Python's json.dumps writes it by default, UTF-8 kept readable."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_jsonl(records: Iterable[dict[str, Any]], handle: IO[str]) -> int:
    count = 0
    for record in records:
        handle.write(jsonl_line(record))
        count += 1
    return count


def write_jsonl_file(records: Iterable[dict[str, Any]], out: str | os.PathLike[str]) -> int:
    """Write to a temp file next to ``out`` and rename it into place: a failure leaves no partial file."""
    target = Path(out)
    if target.is_dir():
        raise DataFileError(f"{target}: is a directory; give a file path for --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            count = write_jsonl(records, handle)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return count


def trl_preference_row(record: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI preference line as a TRL DPOTrainer row: conversational prompt/chosen/rejected."""
    prompt = record["input"]
    row: dict[str, Any] = {
        "prompt": prompt["messages"],
        "chosen": record["preferred_output"],
        "rejected": record["non_preferred_output"],
    }
    if prompt.get("tools") is not None:
        row["tools"] = prompt["tools"]
    return row


def example_rows(url: str, status: str | None) -> Iterator[dict[str, Any]]:
    """Rows of the hf export: ``{"id", "messages"[, "tools", "parallel_tool_calls"]}``, streamed.

    A module-level function of plain arguments, because ``Dataset.from_generator`` pickles its generator.
    """
    database = Database.open(url, migrate=False)
    try:
        for example_id, record in iter_records(database, status=status):
            yield {"id": example_id, **record}
    finally:
        database.close()


# A file in every hf export: ``--force`` replaces only directories that carry it.
EXPORT_MARKER = ".ftbot-export"


def save_hf_dataset(db: Database, out: str | os.PathLike[str], *, status: str | None, overwrite: bool = False) -> int:
    """Save the examples with ``status`` as a ``datasets`` dataset for ``load_from_disk`` (a ``messages`` column).

    Built with ``Dataset.from_generator`` (streamed to Arrow, never all in memory) in a private cache
    directory, so the user's Hugging Face cache is left alone. Returns the number of rows.
    """
    target = Path(out)
    _check_export_target(target, overwrite=overwrite)
    counts = count_by_status(db)
    if (sum(counts.values()) if status is None else counts.get(status, 0)) == 0:
        raise DataFileError(f"nothing to export: no {status or ''} examples stored".replace("  ", " "))

    from datasets import Dataset  # Local: heavy ML library (~2 s to import), needed only for this export format.

    url = db.engine.url.render_as_string(hide_password=False)
    with tempfile.TemporaryDirectory(prefix="ftbot-hf-") as cache_dir:
        try:
            dataset = Dataset.from_generator(
                example_rows, gen_kwargs={"url": url, "status": status}, cache_dir=cache_dir
            )
        except Exception as error:  # Arrow cannot give one type to a column whose rows disagree
            raise DataFileError(
                f"cannot build a Hugging Face dataset from these examples ({error.__class__.__name__}: {error}); "
                "export --format openai and load the JSONL instead"
            ) from error
        _check_export_target(target, overwrite=overwrite)  # again: the directory may have changed meanwhile
        if target.exists():
            shutil.rmtree(target)
        dataset.save_to_disk(str(target))
        (target / EXPORT_MARKER).write_text("Written by `ftbot export --format hf`; `--force` may replace this directory.\n")
        return len(dataset)


def _check_export_target(target: Path, *, overwrite: bool) -> None:
    """Refuse a target that holds anything but an earlier ftbot export: ``--force`` must never delete the user's files."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise DataFileError(f"{target}: exists and is not a directory; choose another --out")
    if not any(target.iterdir()):
        return
    if not (target / EXPORT_MARKER).is_file():
        raise DataFileError(f"{target}: is not empty and is not an ftbot export, so ftbot will not replace it; "
                            "choose a new or empty directory for --out")
    if not overwrite:
        raise DataFileError(f"{target}: already holds an ftbot export; choose another --out or pass --force to replace it")
