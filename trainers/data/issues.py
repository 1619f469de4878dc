"""Findings of the data checks: their codes, one finding (``Issue``), and the capped log a report keeps."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Issue", "IssueLog", "ERROR_CODES", "WARNING_CODES", "MAX_ISSUES_PER_CODE", "MAX_ISSUES"]

ERROR_CODES = (
    "invalid_json",
    "data_type",
    "missing_messages_list",
    "message_missing_key",
    "message_unrecognized_key",
    "unrecognized_role",
    "missing_content",
    "example_missing_assistant_message",
    "invalid_weight",
    "invalid_tool_call",
    "too_few_examples",
)
WARNING_CODES = (
    "missing_system_message",
    "missing_user_message",
    "too_long",
    "duplicate_example",
    "near_duplicate",
    "inconsistent_system_prompt",
    "pii",
    "short_assistant_reply",
)

MAX_ISSUES_PER_CODE = 100
MAX_ISSUES = 1000


@dataclass(frozen=True, slots=True)
class Issue:
    """One finding: ``line`` is 1-based (None for file-level findings)."""

    line: int | None
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "code": self.code, "message": self.message}


@dataclass
class IssueLog:
    """Every issue counted by code; the first ``per_code`` of each code (``limit`` in all) kept in full."""

    per_code: int = MAX_ISSUES_PER_CODE
    limit: int = MAX_ISSUES
    unit: str = "line"
    items: list[Issue] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, issue: Issue) -> None:
        self.counts[issue.code] += 1
        if self.counts[issue.code] <= self.per_code and len(self.items) < self.limit:
            if self.unit != "line" and issue.message.startswith("line "):
                issue = Issue(issue.line, issue.code, self.unit + issue.message[4:])
            self.items.append(issue)

    @property
    def truncated(self) -> bool:
        return sum(self.counts.values()) > len(self.items)

    def sorted_items(self) -> list[Issue]:
        return sorted(self.items, key=lambda issue: (issue.line is not None, issue.line or 0))
