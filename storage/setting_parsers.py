"""Parsers for ftbot's environment variables: a variable's name and its non-blank text → the value.

Each raises ``ConfigError`` with what to set instead; ``storage.config`` declares which variable uses which.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from storage.errors import ConfigError

# How every variable is read: (its name, its non-blank text) → the value.
Parser = Callable[[str, str], object]


def text(_name: str, value: str) -> str:
    return value


def path(_name: str, text: str) -> Path:
    return Path(text).expanduser()


def id_list(_name: str, text: str) -> tuple[str, ...]:
    """``"U1, U2,S3"`` → ``("U1", "U2", "S3")``; also accepts ``<@U1>`` and ``<!subteam^S3>`` as pasted from Slack."""
    ids: list[str] = []
    for part in text.replace(";", ",").replace(" ", ",").split(","):
        part = part.strip().strip("<>@").removeprefix("!subteam^").split("|")[0]
        if part and part not in ids:
            ids.append(part)
    return tuple(ids)


def channel_prompts(name: str, text: str) -> Mapping[str, str]:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{name} is not valid JSON ({exc.msg} at character {exc.pos}): "
            'set it to an object such as {"C0123456789": "You answer billing questions."}'
        ) from None
    if not isinstance(parsed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()):
        raise ConfigError(f'{name} must be a JSON object of channel ID → prompt text, e.g. {{"C0123456789": "…"}}')
    return MappingProxyType(dict(parsed))


def json_object(name: str, text: str) -> Mapping[str, object]:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} is not valid JSON ({exc.msg} at character {exc.pos}): set it to a JSON object") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{name} must be a JSON object, e.g. {{\"image_uri\": \"registry/ftbot-worker:1\"}}")
    return MappingProxyType(parsed)


def api_url(_name: str, text: str) -> str:
    return text if text.endswith("/") else text + "/"  # slack_sdk joins method names onto base_url


def port(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a number: set {name} to the HTTP port, e.g. 3000") from None


def whole_number(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {text!r}") from None


def number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r}") from None


def positive(default: float, *, allow_zero: bool = False) -> Parser:
    def parse(name: str, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if value < 0 or (value == 0 and not allow_zero) or value != value:
            raise ConfigError(f"{name}={text!r} is not a positive number: set it to e.g. {default:g}, or unset it")
        return value

    return parse


def whole_number_between(low: int, high: int) -> Parser:
    """A whole number from ``low`` to ``high``; anything else is a ConfigError naming the range."""

    def parse(name: str, text: str) -> int:
        if not (text.isascii() and text.isdigit() and len(text) <= 9 and low <= int(text) <= high):
            raise ConfigError(f"{name}={text!r} must be a whole number from {low} to {high}")
        return int(text)

    return parse


def switch(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be on or off (1/0, true/false, yes/no), got {text!r}")
