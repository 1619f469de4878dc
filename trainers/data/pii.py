"""Finding and redacting personal data in support text before it leaves the premises.

Each detector is a regular expression for candidates plus a check that removes look-alikes:
card numbers must pass the Luhn check, IBANs the ISO 13616 mod-97 check, SSNs the SSA's never-issued
ranges, phone numbers need 9 to 15 digits and a phone-like shape. Order numbers and dates stay untouched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["PiiFinding", "PII_KINDS", "find_pii", "redact", "redact_record", "luhn_valid", "iban_valid"]

# Kind -> placeholder used by redact().
PII_KINDS: dict[str, str] = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "card": "[CARD]",
    "iban": "[IBAN]",
    "ssn": "[SSN]",
    "ip": "[IP]",
}


@dataclass(frozen=True, slots=True)
class PiiFinding:
    kind: str
    start: int
    end: int
    text: str

    @property
    def placeholder(self) -> str:
        return PII_KINDS[self.kind]


# Patterns start with a character class (no leading look-behind) so the regex engine can skip ahead
# quickly; the word-boundary check on the left is done in Python on the rare candidates.
_EMAIL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}(?![\w-])")
_IBAN = re.compile(r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_IBAN_HEAD = re.compile(r"[A-Z]{2}[0-9]{2}")
# A run of digits with the separators people type in phone, card, SSN numbers and IP addresses. Every
# digit-based kind, IBANs included, contains one, so this is the only full scan of the text.
_DIGIT_RUN = re.compile(r"[0-9][0-9 \t().\-]{5,}[0-9]")
_DIGITS = re.compile(r"\d")
_SSN = re.compile(r"(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}")
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)")
_CARD_SHAPE = re.compile(r"\d(?:[ -]?\d){12,18}")
_DATE_LIKE = re.compile(r"\d{1,4}([./-])\d{1,2}\1\d{1,4}")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum used by every payment card number."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to numbers, the result mod 97 is 1."""
    compact = candidate.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    numeric = "".join(str(int(char, 36)) for char in rearranged)
    return int(numeric) % 97 == 1


def _classify_digit_run(run: str, opener: str) -> str | None:
    """Kind of a digit run ("card", "ssn", "ip", "phone") or None; ``opener`` is "+" or "(" typed before it."""
    digits = _DIGITS.findall(run)
    count = len(digits)
    if count < 9:
        # Too few digits for an SSN, a card or a phone number (most runs: order numbers, amounts, times):
        # only an IPv4 address is left, and no date-like run is one (three groups, not four).
        return "ip" if "." in run and _IPV4.fullmatch(run) else None
    if _SSN.fullmatch(run):
        return "ssn"
    if _DATE_LIKE.fullmatch(run):
        return None
    if "." in run and _IPV4.fullmatch(run):
        return "ip"
    if 13 <= count <= 19 and _CARD_SHAPE.fullmatch(run) and luhn_valid("".join(digits)):
        return "card"
    if 9 <= count <= 15 and "." not in run.replace(". ", " "):
        # A bare run of digits is more often an order or ticket number than a phone number.
        grouped = any(separator in run for separator in " ()-")
        if opener or (grouped and count >= 10):
            return "phone"
    return None


def _left_boundary(text: str, start: int) -> bool:
    return start == 0 or not (text[start - 1].isalnum() or text[start - 1] in "_.+-@")


def _iban_at(text: str, run_start: int) -> re.Match[str] | None:
    """An IBAN that contains the digit run starting at ``run_start`` (its head is at most 34 chars back)."""
    window_start = max(0, run_start - 34)
    letters = text[window_start : run_start + 2]
    if letters == letters.lower():
        return None  # no upper-case letter where the two letters of an IBAN's head would be
    for head in _IBAN_HEAD.finditer(text, window_start, run_start + 4):
        if head.start() > run_start:
            break
        if not _left_boundary(text, head.start()):
            continue
        match = _IBAN.match(text, head.start())
        if match and match.end() > run_start and iban_valid(match.group()):
            return match
    return None


def find_pii(text: str) -> list[PiiFinding]:
    """All personal data found in ``text``, ordered by position, without overlaps."""
    if not text:
        return []
    findings: list[PiiFinding] = []
    if "@" in text:
        for email in _EMAIL.finditer(text):
            if _left_boundary(text, email.start()):
                findings.append(PiiFinding("email", email.start(), email.end(), email.group()))
    position = 0
    while True:
        match = _DIGIT_RUN.search(text, position)
        if match is None:
            break
        start = match.start()
        position = match.end()
        iban = _iban_at(text, start) if start >= 2 else None
        if iban is not None:
            findings.append(PiiFinding("iban", iban.start(), iban.end(), iban.group()))
            position = max(position, iban.end())
            continue
        if start and text[start - 1].isalnum():
            continue  # part of a word or code such as "A1234567"
        if start and text[start - 1] == "_":
            continue
        if match.end() < len(text) and (text[match.end()].isalnum() or text[match.end()] == "_"):
            continue  # runs into a word: "12345678abc"
        run = match.group().rstrip(" \t(.-")
        opener = text[start - 1] if start and text[start - 1] in "+(" else ""
        kind = _classify_digit_run(run, opener)
        if kind is not None:
            begin = start - 1 if opener else start
            findings.append(PiiFinding(kind, begin, start + len(run), text[begin : start + len(run)]))
            continue
        if " " in run or "\t" in run:
            # Two numbers typed side by side ("123-45-6789 415-555-0134"): classify each part.
            offset = start
            for part in re.split(r"([ \t]+)", run):
                piece = part.strip("().")
                if piece and not part.isspace():
                    piece_start = text.find(piece, offset)
                    found = _classify_digit_run(piece, "")
                    if found:
                        findings.append(PiiFinding(found, piece_start, piece_start + len(piece), piece))
                offset += len(part)
    if len(findings) <= 1:
        return findings
    findings.sort(key=lambda finding: (finding.start, -(finding.end - finding.start)))
    merged: list[PiiFinding] = []
    for finding in findings:
        if merged and finding.start < merged[-1].end:
            continue  # overlaps an earlier, longer finding
        merged.append(finding)
    return merged


def redact(text: str) -> str:
    """``text`` with every finding replaced by its typed placeholder, e.g. ``[EMAIL]``."""
    findings = find_pii(text)
    if not findings:
        return text
    parts: list[str] = []
    position = 0
    for finding in findings:
        parts.append(text[position : finding.start])
        parts.append(finding.placeholder)
        position = finding.end
    parts.append(text[position:])
    return "".join(parts)


def _redact_values(value: Any) -> Any:
    """Every string value inside parsed JSON redacted; keys and structure untouched."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_values(item) for item in value]
    if isinstance(value, dict):
        return {key: _redact_values(item) for key, item in value.items()}
    return value


def _redact_arguments(arguments: Any) -> Any:
    # Tool-call arguments are a JSON document in a string: redact inside its string values so it stays valid JSON.
    if not isinstance(arguments, str):
        return arguments
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return redact(arguments)
    redacted = _redact_values(parsed)
    return arguments if redacted == parsed else json.dumps(redacted, ensure_ascii=False)


def _redact_message(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    out = dict(message)
    content = out.get("content")
    if isinstance(content, str):
        out["content"] = redact(content)
    elif isinstance(content, list):
        out["content"] = [
            {**part, "text": redact(part["text"])} if isinstance(part, dict) and isinstance(part.get("text"), str) else part
            for part in content
        ]
    if isinstance(out.get("tool_calls"), list):
        out["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": _redact_arguments(call["function"].get("arguments"))}}
            if isinstance(call, dict) and isinstance(call.get("function"), dict) else call
            for call in out["tool_calls"]
        ]
    if isinstance(out.get("function_call"), dict):  # the legacy single-call form
        out["function_call"] = {**out["function_call"], "arguments": _redact_arguments(out["function_call"].get("arguments"))}
    return out


def redact_record(record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(a copy of an OpenAI SFT or DPO line with its personal data redacted, whether anything was redacted).

    Message contents (strings and text parts) and tool-call arguments are redacted; tool definitions, roles and
    other keys are not. The input is not modified.
    """
    out = dict(record)
    if isinstance(out.get("messages"), list):
        out["messages"] = [_redact_message(m) for m in out["messages"]]
    if isinstance(out.get("input"), dict) and isinstance(out["input"].get("messages"), list):
        out["input"] = {**out["input"], "messages": [_redact_message(m) for m in out["input"]["messages"]]}
    for key in ("preferred_output", "non_preferred_output"):
        if isinstance(out.get(key), list):
            out[key] = [_redact_message(m) for m in out[key]]
    return out, out != record
