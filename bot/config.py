"""All of ftbot's configuration, read once from the environment into a frozen ``Settings``.

Other features add their own fields here with small targeted edits (a field with a default plus one line
in ``from_env``). Secrets are never part of ``repr`` so a logged ``Settings`` cannot leak a token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from storage.errors import ConfigError

DEFAULT_SYSTEM_PROMPT = "You are a helpful, friendly customer support agent. Answer accurately and concisely."


def _id_list(raw: str | None) -> tuple[str, ...]:
    """``"U1, U2,S3"`` → ``("U1", "U2", "S3")``; also accepts ``<@U1>`` and ``<!subteam^S3>`` as pasted from Slack."""
    if not raw:
        return ()
    ids: list[str] = []
    for part in raw.replace(";", ",").replace(" ", ",").split(","):
        part = part.strip().strip("<>@").removeprefix("!subteam^").split("|")[0]
        if part and part not in ids:
            ids.append(part)
    return tuple(ids)


def _channel_prompts(raw: str | None) -> Mapping[str, str]:
    if not raw:
        return MappingProxyType({})
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"FTBOT_CHANNEL_PROMPTS is not valid JSON ({exc.msg} at character {exc.pos}): "
            'set it to an object such as {"C0123456789": "You answer billing questions."}'
        ) from None
    if not isinstance(parsed, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()):
        raise ConfigError(
            'FTBOT_CHANNEL_PROMPTS must be a JSON object of channel ID → prompt text, e.g. {"C0123456789": "…"}'
        )
    return MappingProxyType(dict(parsed))


def _positive_float(name: str, raw: str | None, default: float, *, allow_zero: bool = False) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        raise ConfigError(f"{name}={raw!r} is not a positive number: set it to e.g. {default:g}, or unset it")
    return value


@dataclass(frozen=True)
class Settings:
    """ftbot's configuration. Build it with ``Settings.from_env()``; tests pass fields directly."""

    slack_bot_token: str | None = field(default=None, repr=False)
    slack_signing_secret: str | None = field(default=None, repr=False)
    slack_app_token: str | None = field(default=None, repr=False)
    database_url: str | None = None
    # Send Web API calls elsewhere (the console's and the tests' fake Slack): "http://127.0.0.1:PORT/api/".
    slack_api_url: str | None = None
    # Roles: Slack user IDs (U…/W…) or user-group IDs (S…). Empty everywhere = no role configuration.
    agents: tuple[str, ...] = ()
    reviewers: tuple[str, ...] = ()
    trainers: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()
    voters: tuple[str, ...] = ()
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    channel_prompts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # The OpenAI base model for /ft price, /ft validate and OpenAI training (FTBOT_OPENAI_MODEL). The on-prem base
    # model is FTBOT_LOCAL_BASE_MODEL, read by trainers.training.local.config where local training is prepared.
    openai_model: str = "gpt-4o-mini-2024-07-18"
    http_port: int = 3000
    # Evaluation: the baseline ("base" = the candidate's base model, "openai:<model>", a registered model or a local
    # base model), how long voting stays open, and the pause between posted comparisons (Slack: ~1 message/s/channel).
    eval_baseline: str | None = None
    eval_hours: float = 24.0
    eval_post_interval: float = 1.1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        from trainers.training.quote import configured_openai_model

        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value and value.strip() else None

        port_raw = get("PORT") or "3000"
        try:
            port = int(port_raw)
        except ValueError:
            raise ConfigError(f"PORT={port_raw!r} is not a number: set PORT to the HTTP port, e.g. 3000") from None
        api_url = get("FTBOT_SLACK_API_URL")
        if api_url and not api_url.endswith("/"):
            api_url += "/"  # slack_sdk joins method names onto base_url
        values: dict[str, Any] = dict(
            slack_bot_token=get("SLACK_BOT_TOKEN"),
            slack_signing_secret=get("SLACK_SIGNING_SECRET"),
            slack_app_token=get("SLACK_APP_TOKEN"),
            database_url=get("FTBOT_DATABASE_URL"),
            slack_api_url=api_url,
            agents=_id_list(get("FTBOT_AGENTS")),
            reviewers=_id_list(get("FTBOT_REVIEWERS")),
            trainers=_id_list(get("FTBOT_TRAINERS")),
            admins=_id_list(get("FTBOT_ADMINS")),
            voters=_id_list(get("FTBOT_VOTERS")),
            system_prompt=get("FTBOT_SYSTEM_PROMPT") or DEFAULT_SYSTEM_PROMPT,
            channel_prompts=_channel_prompts(get("FTBOT_CHANNEL_PROMPTS")),
            openai_model=configured_openai_model(env),
            http_port=port,
            eval_baseline=get("FTBOT_EVAL_BASELINE"),
            eval_hours=_positive_float("FTBOT_EVAL_HOURS", get("FTBOT_EVAL_HOURS"), 24.0),
            eval_post_interval=_positive_float("FTBOT_EVAL_POST_INTERVAL", get("FTBOT_EVAL_POST_INTERVAL"), 1.1, allow_zero=True),
        )
        return cls(**values)

    @property
    def has_slack_credentials(self) -> bool:
        return bool(self.slack_bot_token and (self.slack_app_token or self.slack_signing_secret))

    def require_socket_mode(self) -> None:
        """Raise ``ConfigError`` unless Socket Mode can start."""
        missing = [n for n, v in (("SLACK_BOT_TOKEN", self.slack_bot_token), ("SLACK_APP_TOKEN", self.slack_app_token)) if not v]
        if missing:
            raise ConfigError(
                f"Socket Mode needs {' and '.join(missing)}: copy the bot token (xoxb-…) from OAuth & Permissions and an "
                "app-level token with connections:write (xapp-…) from Basic Information of your Slack app"
            )
        if not self.slack_app_token.startswith("xapp-"):
            raise ConfigError("SLACK_APP_TOKEN must be an app-level token starting with xapp- (Basic Information → App-Level Tokens)")

    def require_http(self) -> None:
        """Raise ``ConfigError`` unless HTTP mode can start."""
        missing = [
            n for n, v in (("SLACK_BOT_TOKEN", self.slack_bot_token), ("SLACK_SIGNING_SECRET", self.slack_signing_secret)) if not v
        ]
        if missing:
            raise ConfigError(
                f"HTTP mode needs {' and '.join(missing)}: copy the bot token (xoxb-…) from OAuth & Permissions and the "
                "signing secret from Basic Information of your Slack app"
            )

    def channel_prompt(self, channel_id: str | None) -> str:
        """The configured system prompt for a channel (the database-stored one is looked up by ``bot.capture``)."""
        if channel_id and channel_id in self.channel_prompts:
            return self.channel_prompts[channel_id]
        return self.system_prompt
