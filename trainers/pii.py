"""Finding and redacting personal data in support text before it leaves the premises.

Each detector is a regular expression for candidates plus a check that removes look-alikes:
card numbers must pass the Luhn check, IBANs the ISO 13616 mod-97 check, SSNs the SSA's never-issued
ranges, phone numbers need 9 to 15 digits and a phone-like shape. Order numbers and dates stay untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PiiFinding", "PII_KINDS", "find_pii", "redact", "luhn_valid", "iban_valid"]

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


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}(?![\w-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])")
# A run of digits with the separators people type in phone and card numbers.
_DIGIT_RUN = re.compile(r"(?<![\w+])\+?\(?\d[\d \t().-]{6,}\d(?![\w])")
_DIGITS = re.compile(r"\d")
_DATE_LIKE = re.compile(r"^\d{1,4}([./-])\d{1,2}\1\d{1,4}$")


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


def _classify_digit_run(run: str) -> str | None:
    digits = "".join(_DIGITS.findall(run))
    count = len(digits)
    stripped = run.strip()
    if _DATE_LIKE.match(stripped):
        return None
    # Cards: 13-19 digits typed plain or in groups of digits separated by spaces or dashes.
    if 13 <= count <= 19 and re.fullmatch(r"\d[\d -]*\d", stripped) and luhn_valid(digits):
        return "card"
    if 9 <= count <= 15:
        plus = stripped.startswith("+")
        grouped = bool(re.search(r"[ ().-]", stripped))
        # A bare run of digits is more often an order or ticket number than a phone number.
        if plus or (grouped and count >= 10) or (stripped.startswith("(") and count >= 10):
            return "phone"
    return None


def find_pii(text: str) -> list[PiiFinding]:
    """All personal data found in ``text``, ordered by position, without overlaps."""
    if not text:
        return []
    findings: list[PiiFinding] = []
    if "@" in text:
        findings.extend(PiiFinding("email", m.start(), m.end(), m.group()) for m in _EMAIL.finditer(text))
    has_digit = _DIGITS.search(text) is not None
    if has_digit:
        for match in _IBAN.finditer(text):
            if iban_valid(match.group()):
                findings.append(PiiFinding("iban", match.start(), match.end(), match.group()))
        if "-" in text:
            findings.extend(PiiFinding("ssn", m.start(), m.end(), m.group()) for m in _SSN.finditer(text))
        if "." in text:
            findings.extend(PiiFinding("ip", m.start(), m.end(), m.group()) for m in _IPV4.finditer(text))
        for match in _DIGIT_RUN.finditer(text):
            run = match.group()
            # The run may swallow a trailing separator; trim it so the span is exact.
            trimmed = run.rstrip(" \t().-")
            kind = _classify_digit_run(trimmed)
            if kind:
                findings.append(PiiFinding(kind, match.start(), match.start() + len(trimmed), trimmed))
    if len(findings) <= 1:
        return findings
    findings.sort(key=lambda finding: (finding.start, -(finding.end - finding.start)))
    merged: list[PiiFinding] = []
    for finding in findings:
        if merged and finding.start < merged[-1].end:
            continue  # overlaps an earlier, longer finding (an SSN inside a phone-like run, say)
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
