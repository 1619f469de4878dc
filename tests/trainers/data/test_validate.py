"""Per-line checks of training lines, and their agreement with OpenAI's per-line training schemas."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator

from tests.fixtures.paths import REPO, TEST_DATA
from tests.fixtures.records import BAD_LINES, DPO_LINE, PARTS_LINE, SYSTEM, TOOL_CALL_LINE, WEIGHTED_LINE, conversation
from trainers.data.issues import ERROR_CODES, WARNING_CODES
from trainers.data.validate import check_record

SPEC = TEST_DATA / "openai" / "training-formats-excerpt.json"


# --- per-line checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line", [conversation("Hi?", "Hello, how can I help you today?"), TOOL_CALL_LINE, WEIGHTED_LINE, PARTS_LINE, DPO_LINE]
)
def test_valid_lines_have_no_errors(line: dict[str, Any]) -> None:
    checked = check_record(line, 7)
    assert checked.errors == []
    assert checked.record is line
    assert checked.kind == ("dpo" if "input" in line else "sft")


@pytest.mark.parametrize(("value", "code", "fragment"), BAD_LINES)
def test_each_error_code_says_where_and_what(value: Any, code: str, fragment: str) -> None:
    checked = check_record(value, 12)
    codes = [issue.code for issue in checked.errors]
    assert code in codes
    issue = checked.errors[codes.index(code)]
    assert issue.line == 12
    assert issue.message.startswith("line 12: ")
    assert fragment in issue.message
    assert checked.record is None
    assert issue.to_json() == {"line": 12, "code": code, "message": issue.message}


def test_every_line_level_error_code_is_covered() -> None:
    covered = {code for _, code, _ in BAD_LINES}
    assert covered | {"invalid_json", "too_few_examples"} == set(ERROR_CODES)


def test_per_line_warnings() -> None:
    no_system = check_record(conversation("Hi, where is my order?", "It shipped today and arrives on Friday.", system=None), 1)
    assert [w.code for w in no_system.warnings] == ["missing_system_message"]
    no_user = check_record(
        {"messages": [{"role": "system", "content": SYSTEM}, {"role": "assistant", "content": "Welcome to Acme, how can I help today?"}]}, 2
    )
    assert [w.code for w in no_user.warnings] == ["missing_user_message"]
    short = check_record(conversation("Is it fixed?", "Yes, fixed."), 3)
    assert [w.code for w in short.warnings] == ["short_assistant_reply"]
    assert "messages[2]" in short.warnings[0].message
    pii = check_record(
        conversation("I'm dana@example.com, card 4111 1111 1111 1111", "Thanks, I will call you at +1 415 555 0134 today."), 4
    )
    assert [(w.code, w.message.split(".content")[0]) for w in pii.warnings] == [
        ("pii", "line 4: messages[1]"),
        ("pii", "line 4: messages[2]"),
    ]
    assert "1 email address, 1 card number" in pii.warnings[0].message
    assert "dana@example.com" not in pii.warnings[0].message  # the report does not repeat the personal data
    assert check_record(conversation("I'm dana@example.com", "Thanks, I have updated your account."), 5, pii=False).warnings == []
    assert all(w.code in WARNING_CODES for w in no_system.warnings + no_user.warnings + short.warnings + pii.warnings)


def test_weight_zero_short_reply_is_not_flagged() -> None:
    assert [w.code for w in check_record(WEIGHTED_LINE, 1).warnings] == []


# --- agreement with OpenAI's per-line schemas ---------------------------------------------------------


@pytest.fixture(scope="module")
def schemas():
    spec = json.loads(SPEC.read_text())

    def validator(name: str):
        return OAS30Validator({"$ref": f"#/components/schemas/{name}", "components": spec["components"]})

    return validator("FineTuneChatRequestInput"), validator("FineTunePreferenceRequestInput")


def _for_schema(value: Any) -> Any:
    """OpenAPI 3.0 cannot express ``nullable`` next to ``oneOf`` (the spec's content field); the spec's text
    says content may be omitted with tool_calls, so drop null contents before checking."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        input_messages = (value.get("input") or {}).get("messages") if isinstance(value.get("input"), dict) else None
        for messages in (value.get("messages"), input_messages):
            for message in messages or []:
                if isinstance(message, dict) and message.get("content", 0) is None:
                    del message["content"]
    return value


def test_lines_we_accept_are_valid_under_openai_schema(schemas) -> None:
    chat, preference = schemas
    dpo_old_names = {"input": DPO_LINE["input"], "preferred_completion": DPO_LINE["preferred_output"],
                     "non_preferred_completion": DPO_LINE["non_preferred_output"]}
    sample = [json.loads(line) for line in (REPO / "bot" / "data" / "sample.jsonl").read_text().splitlines()]
    for line in [TOOL_CALL_LINE, WEIGHTED_LINE, PARTS_LINE, *sample]:
        assert check_record(line, 1).errors == []
        assert list(chat.iter_errors(_for_schema(line))) == []
    assert check_record(dpo_old_names, 1).errors == []
    assert list(preference.iter_errors(_for_schema(dpo_old_names))) == []


def test_lines_the_schema_rejects_are_errors_for_us(schemas) -> None:
    chat, _ = schemas
    rejected_by_schema = [
        value for value, _, _ in BAD_LINES if isinstance(value, dict) and "input" not in value and list(chat.iter_errors(value))
    ]
    assert len(rejected_by_schema) >= 8  # the schema is permissive (no additionalProperties): a subset
    for value in rejected_by_schema:
        assert check_record(value, 1).errors, value
