"""Personal data detection and redaction."""

from __future__ import annotations

import json

import pytest

from trainers.data.pii import find_pii, iban_valid, luhn_valid, redact, redact_record


@pytest.mark.parametrize(
    ("text", "kinds", "redacted"),
    [
        ("write to jane.doe+billing@example.co.uk today", ["email"], "write to [EMAIL] today"),
        ("call +1 (415) 555-0134 now", ["phone"], "call [PHONE] now"),
        ("or (415) 555 0134 or 415-555-0134", ["phone", "phone"], "or [PHONE] or [PHONE]"),
        ("UK office +44 20 7946 0958.", ["phone"], "UK office [PHONE]."),
        ("card 4111 1111 1111 1111 exp 12/29", ["card"], "card [CARD] exp 12/29"),
        ("card 5500-0000-0000-0004", ["card"], "card [CARD]"),
        ("amex 378282246310005", ["card"], "amex [CARD]"),
        ("IBAN DE89 3704 0044 0532 0130 00 please", ["iban"], "IBAN [IBAN] please"),
        ("pay GB82WEST12345698765432", ["iban"], "pay [IBAN]"),
        ("to GB82 WEST 1234 5698 7654 32.", ["iban"], "to [IBAN]."),
        ("SSN 123-45-6789.", ["ssn"], "SSN [SSN]."),
        ("from 192.168.10.4, blocked", ["ip"], "from [IP], blocked"),
        ("ssn 123-45-6789 phone 415-555-0134", ["ssn", "phone"], "ssn [SSN] phone [PHONE]"),
    ],
)
def test_finds_and_redacts(text: str, kinds: list[str], redacted: str) -> None:
    findings = find_pii(text)
    assert [finding.kind for finding in findings] == kinds
    for finding in findings:
        assert text[finding.start : finding.end] == finding.text
    assert redact(text) == redacted


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 (fails Luhn)",
        "IBAN DE88 3704 0044 0532 0130 00 (bad check digits)",
        "order #123456789 shipped on 2024-01-05",
        "ticket 1234567890 is open",
        "a refund of $123.45 arrives in 5 to 10 days",
        "version 4.12.1 build 20240105",
        "SSN 000-12-3456 and 666-12-3456 are never issued",
        "code A12345678 and var_1234567",
        "Use the @support handle",
        "",
    ],
)
def test_ignores_look_alikes(text: str) -> None:
    assert find_pii(text) == []
    assert redact(text) == text


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE89 3704 0044 0532 0130 01")
    assert not iban_valid("DE89")


def test_redacts_every_occurrence_in_a_long_reply() -> None:
    text = "Hi Ana (ana@example.com), we called +1 415 555 0134 and refunded card 4111111111111111. " * 3
    out = redact(text)
    assert out.count("[EMAIL]") == out.count("[PHONE]") == out.count("[CARD]") == 3
    assert "@" not in out and "4111" not in out


def test_redact_record_redacts_contents_text_parts_and_inside_tool_call_arguments():
    arguments = json.dumps({"email": "ana@example.com", "order": 1234567, "note": ["call 415-555-0134"]})
    record = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "I am ana@example.com"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": arguments}}]},
    ], "tools": [{"type": "function", "function": {"name": "lookup", "description": "mail support@example.com"}}]}
    clean, changed = redact_record(record)
    assert changed and record["messages"][1]["content"][0]["text"] == "I am ana@example.com"  # input untouched
    assert clean["messages"][1]["content"][0]["text"] == "I am [EMAIL]"
    args = json.loads(clean["messages"][2]["tool_calls"][0]["function"]["arguments"])  # still valid JSON
    assert args == {"email": "[EMAIL]", "order": 1234567, "note": ["call [PHONE]"]}
    assert clean["tools"] == record["tools"] and clean["messages"][0] == record["messages"][0]
    pair = {"input": {"messages": [{"role": "user", "content": "ana@example.com"}]},
            "preferred_output": [{"role": "assistant", "content": "ok"}],
            "non_preferred_output": [{"role": "assistant", "content": "mail ana@example.com"}]}
    clean_pair, changed = redact_record(pair)
    assert changed and "ana@" not in json.dumps(clean_pair) and clean_pair["preferred_output"] == pair["preferred_output"]
    assert redact_record({"messages": [{"role": "user", "content": "no personal data"}]})[1] is False
