"""Per-line checks of OpenAI fine-tuning JSONL (SFT chat lines and DPO preference lines).

``check_record`` runs the structural checks of one parsed line with a ``RecordChecker``. Reading the file
lives in ``trainers.data.jsonl``; cross-line checks (duplicates, system-prompt consistency, token limits,
file size) in ``trainers.data.report``.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from trainers.data.issues import Issue
from trainers.data.jsonl import LoneSurrogate, find_lone_surrogate
from trainers.data.pii import PiiFinding, find_pii

__all__ = [
    "CheckedLine",
    "RecordChecker",
    "SHORT_REPLY_WORDS",
    "check_record",
    "detect_kind",
    "system_has_pii",
]

SHORT_REPLY_WORDS = 5  # fewer words than this: short_assistant_reply
_SYSTEM_PII: dict[str, bool] = {}
_PII_NAMES = {"email": "email address", "phone": "phone number", "card": "card number", "iban": "IBAN",
              "ssn": "US social security number", "ip": "IP address"}


@dataclass(slots=True)
class CheckedLine:
    """Result of ``check_record``: ``record`` is the line's dict when it has no errors, else None."""

    line: int
    kind: str
    record: dict[str, Any] | None
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


_ROLE_KEYS: dict[str, frozenset[str]] = {
    "system": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "weight", "tool_calls", "function_call"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}
_SFT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
_DPO_PREFERRED = ("preferred_output", "preferred_completion")
_DPO_REJECTED = ("non_preferred_output", "non_preferred_completion")
_DPO_KEYS = frozenset({"input", *_DPO_PREFERRED, *_DPO_REJECTED})


def detect_kind(value: object) -> str:
    """"dpo" for a preference line (``input`` / ``preferred_output``), else "sft"."""
    if isinstance(value, dict) and ("input" in value or any(key in value for key in _DPO_PREFERRED)):
        return "dpo"
    return "sft"


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def system_has_pii(text: str) -> bool:
    """Whether a system prompt holds personal data; remembered, as the same prompt repeats on every line."""
    known = _SYSTEM_PII.get(text)
    if known is None:
        if len(_SYSTEM_PII) >= 256:
            _SYSTEM_PII.clear()
        known = _SYSTEM_PII[text] = bool(find_pii(text))
    return known


class RecordChecker:
    """Collects issues for one line; ``where`` prefixes say which message and field.

    ``check_record`` drives it over a whole line; the report's fast path (``trainers.data.analysis``) uses it
    to word the rare warnings of a line it has checked itself, so both paths say the same thing.
    """

    __slots__ = ("line", "errors", "warnings", "pii", "pii_parts")

    def __init__(self, line: int, pii: bool):
        self.line = line
        self.errors: list[Issue] = []
        self.warnings: list[Issue] = []
        self.pii = pii
        self.pii_parts: list[tuple[str, str]] = []

    def error(self, code: str, message: str) -> None:
        self.errors.append(Issue(self.line, code, f"line {self.line}: {message}"))

    def warn(self, code: str, message: str) -> None:
        self.warnings.append(Issue(self.line, code, f"line {self.line}: {message}"))

    # -- content ---------------------------------------------------------------------------------
    def text_of(self, content: Any, where: str, role: str) -> str | None:
        """The text of a content field, or None after reporting why it is unusable."""
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            if not content:
                self.error("missing_content", f"{where}.content is an empty list; give the text or at least one content part")
                return None
            texts: list[str] = []
            for index, part in enumerate(content):
                part_where = f"{where}.content[{index}]"
                if not isinstance(part, dict) or "type" not in part:
                    self.error("data_type", f"{part_where} must be an object like {{\"type\": \"text\", \"text\": \"...\"}}")
                    return None
                kind = part.get("type")
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        self.error("missing_content", f"{part_where}.text must be a string")
                        return None
                    texts.append(part["text"])
                elif kind == "image_url" and role == "user":
                    image = part.get("image_url")
                    if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                        self.error("data_type", f"{part_where}.image_url must be an object with a \"url\" string")
                        return None
                elif kind == "image_url":
                    self.error("data_type", f"{part_where}: images are accepted in user messages only")
                    return None
                else:
                    self.error("data_type", f"{part_where}: content part type {kind!r} is not accepted here; use \"text\"")
                    return None
            return "\n".join(texts)
        self.error("missing_content", f"{where}.content must be a string or a list of content parts, not {_type_name(content)}")
        return None

    # -- tool calls ------------------------------------------------------------------------------
    def check_arguments(self, arguments: Any, where: str) -> None:
        if not isinstance(arguments, str):
            self.error(
                "invalid_tool_call",
                f"{where}.arguments must be a JSON string, not {_type_name(arguments)}; encode it with json.dumps",
            )
            return
        try:
            json.loads(arguments)
        except (json.JSONDecodeError, RecursionError):
            self.error("invalid_tool_call", f"{where}.arguments is not valid JSON text; fix the arguments string")

    def check_tool_calls(self, tool_calls: Any, where: str, tool_names: set[str] | None, call_ids: set[str]) -> None:
        if not isinstance(tool_calls, list) or not tool_calls:
            self.error("invalid_tool_call", f"{where}.tool_calls must be a non-empty list of tool calls")
            return
        for index, call in enumerate(tool_calls):
            call_where = f"{where}.tool_calls[{index}]"
            if not isinstance(call, dict):
                self.error("invalid_tool_call", f"{call_where} must be an object with id, type and function")
                continue
            if not isinstance(call.get("id"), str) or not call["id"]:
                self.error("invalid_tool_call", f"{call_where}.id is missing; give each call an id the tool message can answer")
            else:
                call_ids.add(call["id"])
            if call.get("type", "function") != "function":
                self.error("invalid_tool_call", f"{call_where}.type must be \"function\"")
            function = call.get("function")
            if not isinstance(function, dict):
                self.error("invalid_tool_call", f"{call_where}.function must be an object with name and arguments")
                continue
            name = function.get("name")
            if not isinstance(name, str) or not name:
                self.error("invalid_tool_call", f"{call_where}.function.name is missing")
            elif tool_names is not None and name not in tool_names:
                self.error("invalid_tool_call", f"{call_where} calls {name!r}, which is not defined in \"tools\"; add it or fix the name")
            if "arguments" not in function:
                self.error("invalid_tool_call", f"{call_where}.function.arguments is missing; use \"{{}}\" for no arguments")
            else:
                self.check_arguments(function["arguments"], f"{call_where}.function")

    def check_tools(self, tools: Any) -> set[str] | None:
        if tools is None:
            return None
        if not isinstance(tools, list):
            self.error("data_type", f"\"tools\" must be a list of tool definitions, not {_type_name(tools)}")
            return None
        names: set[str] = set()
        for index, tool in enumerate(tools):
            where = f"tools[{index}]"
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
                self.error(
                    "invalid_tool_call",
                    f"{where} must be {{\"type\": \"function\", \"function\": {{\"name\": ..., \"parameters\": {{...}}}}}}",
                )
                continue
            function = tool["function"]
            name = function.get("name")
            if not isinstance(name, str) or not name:
                self.error("invalid_tool_call", f"{where}.function.name is missing")
                continue
            if "parameters" in function and not isinstance(function["parameters"], dict):
                self.error("invalid_tool_call", f"{where}.function.parameters must be a JSON schema object")
            names.add(name)
        return names

    # -- messages --------------------------------------------------------------------------------
    def check_message(
        self,
        message: Any,
        where: str,
        tool_names: set[str] | None,
        call_ids: set[str],
        roles_seen: list[str],
        allowed_roles: tuple[str, ...] = ("system", "user", "assistant", "tool", "function"),
    ) -> tuple[str | None, str | None]:
        """Check one message; returns (role, text) for the line-level checks, None parts when unusable."""
        if not isinstance(message, dict):
            self.error("data_type", f"{where} must be an object with \"role\" and \"content\", not {_type_name(message)}")
            return None, None
        role = message.get("role")
        if role is None:
            self.error("message_missing_key", f"{where} has no \"role\"; add \"role\": \"user\", \"assistant\" or \"system\"")
            return None, None
        if role not in allowed_roles:
            hint = " (\"developer\" is not accepted for fine-tuning: use \"system\")" if role == "developer" else ""
            self.error(
                "unrecognized_role",
                f"{where}.role is {role!r}{hint}; use one of {', '.join(allowed_roles)}",
            )
            return None, None
        roles_seen.append(role)
        allowed = _ROLE_KEYS[role]
        for key in message:
            if key not in allowed:
                if key == "weight":
                    self.error("invalid_weight", f"{where}: only assistant messages take a \"weight\"; remove it")
                else:
                    self.error(
                        "message_unrecognized_key",
                        f"{where} has an unrecognized key {key!r}; a {role} message takes {', '.join(sorted(allowed))}",
                    )
        if "name" in message and not isinstance(message["name"], str):
            self.error("data_type", f"{where}.name must be a string")
        has_calls = role == "assistant" and ("tool_calls" in message or message.get("function_call") is not None)
        if role == "assistant":
            if "weight" in message:
                weight = message["weight"]
                if isinstance(weight, bool) or weight not in (0, 1):
                    self.error("invalid_weight", f"{where}.weight is {json.dumps(weight)}; it must be 0 (do not train on this reply) or 1")
            if "tool_calls" in message:
                self.check_tool_calls(message["tool_calls"], where, tool_names, call_ids)
            if message.get("function_call") is not None:
                call = message["function_call"]
                if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                    self.error("invalid_tool_call", f"{where}.function_call must be an object with name and arguments")
                else:
                    self.check_arguments(call.get("arguments"), f"{where}.function_call")
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if call_id is None:
                self.error("message_missing_key", f"{where} (tool) has no \"tool_call_id\"; give the id of the call it answers")
            elif not isinstance(call_id, str) or call_id not in call_ids:
                self.error(
                    "invalid_tool_call",
                    f"{where}.tool_call_id {json.dumps(call_id)} answers no earlier assistant tool call; fix the id",
                )
        if "content" not in message:
            if has_calls:
                return role, None
            self.error("message_missing_key", f"{where} ({role}) has no \"content\"; add the message text")
            return role, None
        content = message["content"]
        if content is None:
            if has_calls:
                return role, None
            self.error("missing_content", f"{where} ({role}) has null content; give the text (null is only allowed with tool_calls)")
            return role, None
        text = self.text_of(content, where, role)
        if text is None:
            return role, None
        if not text.strip() and not has_calls:
            self.error("missing_content", f"{where} ({role}) has empty content; give the text or remove the message")
            return role, None
        return role, text

    def note_text(self, text: str, where: str, role: str) -> None:
        """Queue a message's text for the PII scan (one scan per line, see ``scan_pii``)."""
        if role == "system" and not system_has_pii(text):
            return  # the same system prompt repeats on every line: scanned once
        self.pii_parts.append((where, text))

    def scan_pii(self, findings: list[PiiFinding] | None = None) -> None:
        """Scan the queued texts joined into one string and warn once per message with findings
        (``findings``: those of that joined string when the caller has them already)."""
        parts = self.pii_parts
        if not parts:
            return
        if findings is None:
            findings = find_pii("\n\n".join(text for _, text in parts))
        if not findings:
            return
        bounds: list[int] = []
        offset = 0
        for _, text in parts:
            offset += len(text)
            bounds.append(offset)
            offset += 2
        by_part: dict[int, dict[str, int]] = {}
        for finding in findings:
            index = bisect_left(bounds, finding.start + 1)
            kinds = by_part.setdefault(index, {})
            kinds[finding.kind] = kinds.get(finding.kind, 0) + 1
        for index, kinds in sorted(by_part.items()):
            described = ", ".join(f"{count} {_PII_NAMES.get(kind, kind)}" for kind, count in kinds.items())
            self.warn(
                "pii",
                f"{parts[index][0]}.content contains personal data ({described}); redact it (placeholders like [EMAIL]) "
                "or confirm it may be used for training",
            )

    def check_reply(self, text: str | None, where: str) -> None:
        if text is not None and len(text.split()) < SHORT_REPLY_WORDS:
            self.warn(
                "short_assistant_reply",
                f"{where} is only {len(text.split())} word(s) ({text.strip()[:40]!r}); "
                "short replies teach terse answers: expand it or set weight 0",
            )

    def check_messages(
        self, messages: Any, where: str, tool_names: set[str] | None, *, need_assistant: bool
    ) -> tuple[list[str], list[str | None]]:
        if not isinstance(messages, list) or not messages:
            what = "missing" if messages is None else ("an empty list" if messages == [] else _type_name(messages))
            self.error("missing_messages_list", f"{where} is {what}; give a non-empty list of messages")
            return [], []
        roles: list[str] = []
        call_ids: set[str] = set()
        trained_assistant = False
        system_texts: list[str | None] = []
        for index, message in enumerate(messages):
            message_where = f"messages[{index}]"
            role, text = self.check_message(message, message_where, tool_names, call_ids, roles)
            if role == "assistant" and isinstance(message, dict):
                trained = message.get("weight", 1) != 0
                if trained:
                    trained_assistant = True
                    if not message.get("tool_calls") and message.get("function_call") is None:
                        self.check_reply(text, message_where)
            if role == "system":
                system_texts.append(text)
            if text and self.pii and role is not None:
                self.note_text(text, message_where, role)
        if need_assistant and not self.errors and not trained_assistant:
            self.error(
                "example_missing_assistant_message",
                "no assistant message with weight 1; add the reply to train on (or set its weight to 1)",
            )
        return roles, system_texts

    def conversation_warnings(self, roles: list[str]) -> None:
        if not roles:
            return
        if "system" not in roles:
            self.warn("missing_system_message", "has no system message; add the system prompt you will use in production")
        if "user" not in roles:
            self.warn("missing_user_message", "has no user message; the model learns to reply to nothing: add the customer's question")


def check_record(value: Any, line: int, kind: str = "auto", *, pii: bool = True) -> CheckedLine:
    """Structural checks of one parsed line (no cross-line checks, no tokens).

    ``kind`` is "sft", "dpo" or "auto" (decided by the line's keys). ``pii=False`` skips the PII scan.
    A string holding a lone surrogate (parsed from a ``"\\ud800"`` escape) raises ``LoneSurrogate``, as a bad byte
    stops a file: nothing downstream (tokens, hashes, the database) can encode it.
    """
    found = find_lone_surrogate(value)
    if found is not None:
        raise LoneSurrogate.found(None, line, *found)
    if kind == "auto":
        kind = detect_kind(value)
    checker = RecordChecker(line, pii)
    if not isinstance(value, dict):
        expected = '{"messages": [...]}' if kind == "sft" else '{"input": {...}, "preferred_output": [...], ...}'
        checker.error("data_type", f"expected a JSON object like {expected}, got {_type_name(value)}")
        return CheckedLine(line, kind, None, checker.errors, checker.warnings)
    if kind == "sft":
        _check_sft(value, checker)
    elif kind == "dpo":
        _check_dpo(value, checker)
    else:
        raise ValueError(f"kind must be 'sft', 'dpo' or 'auto', not {kind!r}")
    if checker.pii:
        checker.scan_pii()
    record = value if not checker.errors else None
    return CheckedLine(line, kind, record, checker.errors, checker.warnings)


def _check_prompt_object(value: dict[str, Any], checker: RecordChecker, *, allowed: frozenset[str], need_assistant: bool) -> list[str]:
    for key in value:
        if key not in allowed:
            checker.error("data_type", f"unrecognized top-level key {key!r}; a line takes {', '.join(sorted(allowed))}")
    if "parallel_tool_calls" in value and not isinstance(value["parallel_tool_calls"], bool):
        checker.error("data_type", "\"parallel_tool_calls\" must be true or false")
    tool_names = checker.check_tools(value.get("tools"))
    roles, _ = checker.check_messages(value.get("messages"), "messages", tool_names, need_assistant=need_assistant)
    return roles


def _check_sft(value: dict[str, Any], checker: RecordChecker) -> None:
    roles = _check_prompt_object(value, checker, allowed=_SFT_KEYS, need_assistant=True)
    checker.conversation_warnings(roles)


def _check_dpo(value: dict[str, Any], checker: RecordChecker) -> None:
    for top_key in value:
        if top_key not in _DPO_KEYS:
            checker.error(
                "data_type",
                f"unrecognized top-level key {top_key!r}; a preference line takes input, preferred_output, non_preferred_output",
            )
    prompt = value.get("input")
    if not isinstance(prompt, dict):
        got = "missing" if prompt is None else _type_name(prompt)
        checker.error("missing_messages_list", f"\"input\" is {got}; give {{\"messages\": [...]}}")
        roles: list[str] = []
    else:
        roles = _check_prompt_object(prompt, checker, allowed=_SFT_KEYS, need_assistant=False)
    for names in (_DPO_PREFERRED, _DPO_REJECTED):
        key = next((name for name in names if name in value), None)
        if key is None:
            checker.error("example_missing_assistant_message", f"\"{names[0]}\" is missing; give a list with exactly one assistant message")
            continue
        output = value[key]
        if not isinstance(output, list) or len(output) != 1:
            checker.error("data_type", f"\"{key}\" must be a list with exactly one assistant message")
            continue
        role, text = checker.check_message(output[0], f"{key}[0]", None, set(), [], allowed_roles=("assistant",))
        if role == "assistant" and isinstance(output[0], dict):
            if "weight" in output[0]:
                checker.error("invalid_weight", f"{key}[0] takes no \"weight\" in a preference line; remove it")
            if key in _DPO_PREFERRED and not output[0].get("tool_calls"):
                checker.check_reply(text, f"{key}[0]")
            if text and checker.pii:
                checker.note_text(text, f"{key}[0]", "assistant")
    checker.conversation_warnings(roles)
