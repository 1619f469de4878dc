"""The streaming JSONL reader: line ends, blank lines, file errors and over-long lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.errors import DataFileError
from trainers.data.jsonl import InvalidUtf8, LineTooLong, read_jsonl


def test_reader_handles_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\r\n   \n{"b": 2}\r\n{"c"')
    assert [(line, value, issue and issue.code) for line, value, issue in read_jsonl(path)] == [
        (1, {"a": 1}, None), (4, {"b": 2}, None), (5, None, "invalid_json")
    ]


def test_reader_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="no such file"):
        list(read_jsonl(tmp_path / "missing.jsonl"))
    with pytest.raises(DataFileError, match="is a directory"):
        list(read_jsonl(tmp_path))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(DataFileError, match="empty"):
        list(read_jsonl(tmp_path / "empty.jsonl"))
    (tmp_path / "utf.jsonl").write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataFileError, match=r"line 2 is not valid UTF-8 \(byte 0xe9"):
        list(read_jsonl(tmp_path / "utf.jsonl"))


def test_reader_stops_at_a_line_over_the_limit_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    with path.open("wb") as handle:
        handle.write(b'{"a": 1}\n{"b": 2}\n')
        handle.truncate(64 * 1024 * 1024)  # a sparse 64 MB third line of NUL bytes
    with pytest.raises(LineTooLong) as caught:
        list(read_jsonl(path, max_line_bytes=4 * 1024 * 1024))
    assert caught.value.line == 3
    assert "line 3 is longer than 4 MiB" in str(caught.value)


def test_a_lone_surrogate_escape_is_invalid_utf8_at_its_line(tmp_path: Path) -> None:
    """``"\\ud800"`` is valid JSON but no UTF-8 text can hold it: the line is named, as for a bad byte."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"a": "\\ud83d\\ude00 \\\\ud800"}\n{"messages": [{"role": "user", "content": "x\\uDBFF"}]}\n')
    with pytest.raises(InvalidUtf8) as caught:
        list(read_jsonl(path))
    assert caught.value.line == 2 and caught.value.code == "invalid_utf8"
    assert str(caught.value) == (
        f"{path}: line 2: messages[0].content holds the escape \\udbff, half of a UTF-16 surrogate pair without its other "
        "half, which is not valid Unicode (invalid_utf8); remove that escape or write the character itself")
    # a key can hold one too
    path.write_bytes(b'{"\\udc00": 1}\n')
    with pytest.raises(InvalidUtf8, match=r"line 1: the key '\\udc00' holds the escape \\udc00"):
        list(read_jsonl(path))
