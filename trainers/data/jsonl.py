"""Reading JSONL training files: bounded blocks of whole lines, single lines, and parsed values.

``read_jsonl`` streams a file with a bounded line reader (a 1 GB line is never held in memory): it reads
fixed-size blocks (``iter_blocks``), splits them into lines (``split_block``) and parses each line
(``parse_line``). File problems (missing, a directory, empty, not UTF-8, a line too long) raise
``DataFileError``; a line that is not JSON is an ``Issue`` for the caller to report.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from storage.config import DEFAULT_MAX_LINE_BYTES
from storage.errors import DataFileError
from trainers.data.issues import Issue

__all__ = [
    "LineTooLong",
    "InvalidUtf8",
    "LoneSurrogate",
    "find_lone_surrogate",
    "MAX_LINE_BYTES",
    "read_jsonl",
    "iter_raw_lines",
    "iter_blocks",
    "split_block",
    "parse_line",
]

# OpenAI accepts files up to 512 MB; one example is at most 65,536 tokens (~260 KB of text). A line
# longer than this is a broken export, not an example, and is never read into memory (FTBOT_MAX_LINE_BYTES).
MAX_LINE_BYTES = DEFAULT_MAX_LINE_BYTES
_READ_BLOCK = 1 << 20
# A JSON escape of a UTF-16 surrogate (\ud800-\udfff): only such a line can parse to a string that UTF-8 cannot hold.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _LineError(DataFileError):
    """A file error at one line; ``line`` and ``code`` say where and what (picklable across processes)."""

    code = "data_file"

    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line

    def __reduce__(self):
        return (type(self), (str(self), self.line))


class LineTooLong(_LineError):
    """A line is longer than ``MAX_LINE_BYTES``."""

    code = "line_too_long"

    @classmethod
    def at(cls, path: str, line: int, limit: int) -> LineTooLong:
        return cls(
            f"{path}: line {line} is longer than {limit // (1024 * 1024)} MiB (line_too_long); "
            "each example must be one JSON object on one line: check that the file is JSONL, not one big JSON array",
            line,
        )


class InvalidUtf8(_LineError):
    """A line is not valid UTF-8."""

    code = "invalid_utf8"

    @classmethod
    def at(cls, path: str, line: int, error: UnicodeDecodeError) -> InvalidUtf8:
        bad = error.object[error.start : error.start + 1].hex()
        return cls(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{bad} at byte {error.start + 1} of the line); re-save the file as UTF-8",
            line,
        )


class LoneSurrogate(InvalidUtf8):
    """A line escapes half of a UTF-16 surrogate pair (``"\\ud800"``): valid JSON, yet not text UTF-8 can hold."""

    @classmethod
    def found(cls, path: str | None, line: int, where: str, char: str) -> LoneSurrogate:
        place = f"{path}: line {line}" if path else f"line {line}"
        return cls(
            f"{place}: {where} holds the escape \\u{ord(char):04x}, half of a UTF-16 surrogate pair without its other half, "
            "which is not valid Unicode (invalid_utf8); remove that escape or write the character itself",
            line,
        )


def _first_surrogate(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return text[error.start]
    return None


def find_lone_surrogate(value: Any) -> tuple[str, str] | None:
    """(where, the character) of the first string or key in a parsed line holding a lone surrogate, else None.

    ``where`` reads like the checks' field paths: ``messages[0].content``, or ``the key '...' in messages[0]``.
    """
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            char = _first_surrogate(item)
            if char is not None:
                return where or "the line's string", char
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                char = _first_surrogate(key)
                if char is not None:
                    return f"the key {key!r}" + (f" in {where}" if where else ""), char
                stack.append((f"{where}.{key}" if where else key, child))
        elif isinstance(item, list):
            stack.extend((f"{where}[{index}]", child) for index, child in reversed(list(enumerate(item))))
    return None


def _open_checked(path: str | os.PathLike[str]):
    p = Path(path)
    if p.is_dir():
        raise DataFileError(f"{p}: is a directory, not a JSONL file; pass the path of a .jsonl file")
    try:
        return p.open("rb")
    except FileNotFoundError:
        raise DataFileError(f"{p}: no such file; check the path") from None
    except PermissionError:
        raise DataFileError(f"{p}: permission denied; make the file readable") from None
    except OSError as exc:
        raise DataFileError(f"{p}: cannot be opened ({exc.strerror})") from None


def iter_blocks(
    path: str | os.PathLike[str], *, block_size: int = _READ_BLOCK, max_line_bytes: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """(number of the first line, bytes holding only whole lines) for consecutive blocks of the file.

    Reads fixed-size blocks, so memory stays bounded by ``max_line_bytes`` plus one block whatever the
    file holds; a line longer than the limit raises ``LineTooLong`` as soon as the limit is passed.
    A UTF-8 byte-order mark at the start of the file is dropped. The last line may lack its newline.
    """
    limit = MAX_LINE_BYTES if max_line_bytes is None else max_line_bytes
    name = str(path)
    with _open_checked(path) as handle:
        carry = b""
        next_line = 1
        first = True
        while True:
            data = handle.read(block_size)
            if first:
                first = False
                if data.startswith(b"\xef\xbb\xbf"):
                    data = data[3:]
            if not data:
                if carry:
                    yield next_line, carry
                return
            buffer = carry + data if carry else data
            cut = buffer.rfind(b"\n")
            if cut < 0:
                carry = buffer
                if len(carry) > limit:
                    raise LineTooLong.at(name, next_line, limit)
                continue
            block, carry = buffer[: cut + 1], buffer[cut + 1 :]
            if len(block) > limit:
                _check_line_lengths(block, next_line, limit, name)
            yield next_line, block
            next_line += block.count(b"\n")
            if len(carry) > limit:
                raise LineTooLong.at(name, next_line, limit)


def _check_line_lengths(block: bytes, first_line: int, limit: int, name: str) -> None:
    start = 0
    line = first_line
    while True:
        end = block.find(b"\n", start)
        if end < 0:
            end = len(block)
        if end - start > limit:
            raise LineTooLong.at(name, line, limit)
        if end >= len(block) - 1:
            return
        start = end + 1
        line += 1


def split_block(block: bytes, first_line: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line bytes without CR/LF) for each line of a block from ``iter_blocks``."""
    lines = block.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    for offset, line in enumerate(lines):
        yield first_line + offset, line[:-1] if line.endswith(b"\r") else line


def iter_raw_lines(
    path: str | os.PathLike[str], *, max_line_bytes: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the line ending) for every line, blank lines included (see ``iter_blocks``)."""
    for first_line, block in iter_blocks(path, max_line_bytes=max_line_bytes):
        yield from split_block(block, first_line)


def parse_line(line_no: int, raw: bytes | str, path: str = "input") -> tuple[Any | None, Issue | None]:
    """Decode and parse one line; invalid UTF-8 (a lone surrogate escape too) raises ``InvalidUtf8``, invalid JSON is an ``Issue``."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidUtf8.at(path, line_no, exc) from None
    else:
        text = raw
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, Issue(
            line_no,
            "invalid_json",
            f"line {line_no}: not valid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object",
        )
    except RecursionError:
        return None, Issue(line_no, "invalid_json", f"line {line_no}: JSON nested too deeply to parse")
    if _SURROGATE_ESCAPE.search(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")):
        found = find_lone_surrogate(value)  # a surrogate pair (an escaped emoji) is fine; half of one is not
        if found is not None:
            raise LoneSurrogate.found(path, line_no, *found)
    return value, None


def read_jsonl(path: str | os.PathLike[str], *, max_line_bytes: int | None = None) -> Iterator[tuple[int, Any | None, Issue | None]]:
    """Stream ``(line number, parsed value or None, Issue or None)`` for each non-blank line.

    Handles a BOM, CRLF line ends and blank lines (skipped). Raises ``DataFileError`` for a missing
    file, a directory, an empty file, a line that is not UTF-8 and a line longer than ``max_line_bytes``.
    """
    name = str(path)
    seen_any = False
    for line_no, raw in iter_raw_lines(path, max_line_bytes=max_line_bytes):
        if not raw.strip():
            continue
        seen_any = True
        value, issue = parse_line(line_no, raw, name)
        yield line_no, value, issue
    if not seen_any:
        raise DataFileError(f"{name}: the file is empty; add one JSON example per line")
