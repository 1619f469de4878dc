"""All of ftbot's configuration: every environment variable it reads, defined once, read into a frozen ``Settings``.

Each ``Settings`` field that comes from the environment declares its variable where the field is declared: the
name, the type (the annotation), the default, how the text is parsed, a one-line doc and the README section.
``ENV_VARIABLES`` collects them; ``Settings.from_env()`` walks that table and ``markdown_table()`` renders it for
the README (``tests/storage/test_config.py`` keeps the two equal, and keeps every ``FTBOT_`` name in the code in
the table).

Entry points read the environment once and pass the settings down: the ``ftbot`` CLI, ``ftbot run`` and the
console, the training worker and entry point, and the generation worker. Library code takes values as parameters.
The exception is where ftbot keeps its state, which every process and the workers it starts share:
:func:`ftbot_home` and :func:`default_database_url` answer for code that needs a path without being handed one.

Lives in ``storage`` (the lowest layer) so that every layer can take it. Secrets are never part of ``repr``, so a
logged ``Settings`` cannot leak a token.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from storage import setting_parsers as parse
from storage.errors import ConfigError
from storage.setting_parsers import Parser

T = TypeVar("T")
# (variable name, its text without surrounding blanks) → the value; raises ConfigError saying what to set.

DEFAULT_SYSTEM_PROMPT = "You are a helpful, friendly customer support agent. Answer accurately and concisely."
DEFAULT_OPENAI_MODEL = "gpt-4o-mini-2024-07-18"
# A small instruct model with a chat template TRL knows how to patch for assistant-only loss; fits a laptop GPU.
DEFAULT_LOCAL_BASE_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
DEFAULT_JUDGE_MODEL = "gpt-4.1-2025-04-14"
# A Together AI base that trains with LoRA and whose weights are public (so its adapter runs on-prem after training).
DEFAULT_TOGETHER_MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"
# HF QLoRA on one A100 40 GB for a 7B model (batch 4, length 1024: ~2,400 tokens/s); measure yours with bench/gpu_qlora.py.
DEFAULT_LOCAL_TOKENS_PER_S = 2400.0
DEFAULT_GPU_HOUR_USD = 2.0
DEFAULT_OPENAI_MAX_RETRIES = 3
# OpenAI's longest training example is ~260 KB of text: a line 60 times that is a broken file, not an example.
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
LAUNCHERS = ("python", "accelerate")

HOME_VARIABLE = "FTBOT_HOME"
DATABASE_URL_VARIABLE = "FTBOT_DATABASE_URL"

SLACK = "Slack app"
STORAGE = "Storage"
DATA = "Data checks"
TRAINING = "Training"
EVALUATION = "Evaluation"
DRAFTS = "Drafts"
CLUSTER = "Cluster and artifacts"
LIBRARIES = "Read by libraries"
SECTIONS = (SLACK, STORAGE, DATA, TRAINING, EVALUATION, DRAFTS, CLUSTER)

# Variables that third-party libraries read themselves; ftbot documents them but never parses them.
LIBRARY_VARIABLES: tuple[tuple[str, str], ...] = (
    ("OPENAI_API_KEY", "The `openai` client's API key: needed to train, generate and judge with OpenAI."),
    ("OPENAI_BASE_URL", "The `openai` client's base URL: a proxy or, in tests, a fake server."),
    ("TIKTOKEN_CACHE_DIR", "tiktoken's cache of encodings (older name `DATA_GYM_CACHE_DIR`); ftbot sets it to "
                           "`$FTBOT_HOME/tiktoken` when neither is set, and seeds it so token counts work offline."),
    ("TOGETHER_API_KEY", "The `together` client's API key: needed to train on Together AI."),
    ("TOGETHER_PROJECT_ID", "The `together` client's project for dedicated endpoints (`ftbot deploy`); unset: the "
                            "API key's own project, asked from Together."),
    ("TOGETHER_BASE_URL", "The `together` client's API root, without `/v1`: a proxy or, in tests, a fake server."),
    ("AWS_ACCESS_KEY_ID", "With `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`): the S3 credentials s3fs uses for an "
                          "`s3://` `FTBOT_ARTIFACTS_URL`; a node's instance role works too."),
    ("RAY_ADDRESS", "Ray's own address variable (and `RAY_API_SERVER_ADDRESS`): Ray's client prefers it to the address "
                    "it is given, so ftbot refuses to submit when it names another cluster than `FTBOT_RAY_ADDRESS`."),
    ("RANK", "Set by `accelerate launch` for each training process: only rank 0 writes metrics and saves the adapter."),
    ("TOKENIZERS_PARALLELISM", "Hugging Face tokenizers' threads; the workers set it to `false` unless it is set."),
)

log = logging.getLogger(__name__)
_warned_deprecated = False  # FTBOT_BASE_MODEL's warning is printed once per process


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: the ``Settings`` field it fills, how its text is parsed, and its README row."""

    name: str
    section: str
    parse: Parser
    doc: str
    # The default in words for the README; None: written from the field's default value.
    shown_default: str | None = None
    # An older name still read (with a warning) when ``name`` is unset.
    deprecated_name: str | None = None
    field: str = ""  # filled in from the dataclass field that declares the variable


ENV_VARIABLE_METADATA = "ftbot_env_variable"  # the key of a field's metadata that holds its EnvVar


def env_setting(default: T, name: str, section: str, parse: Parser, doc: str, *, shown_default: str | None = None,
                secret: bool = False, deprecated_name: str | None = None) -> T:
    """A ``Settings`` field read from environment variable ``name`` (``secret``: left out of ``repr``)."""
    variable = EnvVar(name, section, parse, doc, shown_default, deprecated_name)
    return field(default=default, repr=not secret, metadata={ENV_VARIABLE_METADATA: variable})


def env_setting_from(factory: Callable[[], T], name: str, section: str, parse: Parser, doc: str, *,
                     shown_default: str | None = None) -> T:
    """Like :func:`env_setting` for a default that is built on each use (a mapping, a path from the environment)."""
    variable = EnvVar(name, section, parse, doc, shown_default)
    return field(default_factory=factory, metadata={ENV_VARIABLE_METADATA: variable})


# --- parsers that need ftbot's defaults (the rest are in storage.setting_parsers) ---------------------------------


def _throughput(name: str, text: str) -> float:
    return parse.number(name, text) or DEFAULT_LOCAL_TOKENS_PER_S  # 0 would divide by zero: it means "the default"


def _launcher(name: str, text: str) -> str:
    launcher = text.lower()
    if launcher not in LAUNCHERS:
        raise ConfigError(f"{name} must be 'python' or 'accelerate', got {launcher!r}")
    return launcher


# --- where ftbot keeps its state -----------------------------------------------------------------------------------


def _value(environ: Mapping[str, str], name: str) -> str | None:
    """A variable's text without surrounding blanks; None when it is unset or blank (blank means unset)."""
    value = environ.get(name)
    return value.strip() if value and value.strip() else None


def ftbot_home(environ: Mapping[str, str] | None = None) -> Path:
    """Where ftbot keeps its state: ``$FTBOT_HOME``, else ``$XDG_DATA_HOME/ftbot``, else ``~/.local/share/ftbot``."""
    env = os.environ if environ is None else environ
    configured = _value(env, HOME_VARIABLE)
    if configured:
        return parse.path(HOME_VARIABLE, configured)
    xdg = _value(env, "XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "ftbot"


def default_database_url(environ: Mapping[str, str] | None = None) -> str:
    """``$FTBOT_DATABASE_URL``, else SQLite in ftbot's home."""
    env = os.environ if environ is None else environ
    return _value(env, DATABASE_URL_VARIABLE) or f"sqlite:///{ftbot_home(env) / 'ftbot.sqlite3'}"


# --- the settings --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """ftbot's configuration. Entry points build it with ``Settings.from_env()``; tests pass fields directly."""

    # Slack app. The console's and the tests' fake Slack take Web API calls at "http://127.0.0.1:PORT/api/".
    slack_bot_token: str | None = env_setting(
        None, "SLACK_BOT_TOKEN", SLACK, parse.text, "Bot token (`xoxb-…`) from *OAuth & Permissions*. Never logged.", secret=True)
    slack_app_token: str | None = env_setting(
        None, "SLACK_APP_TOKEN", SLACK, parse.text, "App-level token (`xapp-…`, `connections:write`): turns on Socket Mode.",
        secret=True)
    slack_signing_secret: str | None = env_setting(
        None, "SLACK_SIGNING_SECRET", SLACK, parse.text, "Signing secret from *Basic Information*: needed for `--http`.", secret=True)
    http_port: int = env_setting(3000, "PORT", SLACK, parse.port, "HTTP port when `--port` is not given.")
    slack_api_url: str | None = env_setting(
        None, "FTBOT_SLACK_API_URL", SLACK, parse.api_url,
        "Send Web API calls to another base URL (a proxy or a fake Slack), e.g. `http://127.0.0.1:8080/api/`.",
        shown_default="Slack's Web API")
    # Roles: Slack user IDs (U…/W…) or user-group IDs (S…). Empty everywhere = no role configuration.
    agents: tuple[str, ...] = env_setting(
        (), "FTBOT_AGENTS", SLACK, parse.id_list,
        "Support agents (capture replies): comma-separated user IDs (`U…`) or user-group IDs (`S…`, read with "
        "`usergroups:read`). With no role variable set, everyone may do everything.", shown_default="unset")
    reviewers: tuple[str, ...] = env_setting(
        (), "FTBOT_REVIEWERS", SLACK, parse.id_list, "Reviewers (approve or reject captures), as for `FTBOT_AGENTS`.",
        shown_default="unset")
    trainers: tuple[str, ...] = env_setting(
        (), "FTBOT_TRAINERS", SLACK, parse.id_list, "Trainers (train, evaluate, choose the model in use), as for `FTBOT_AGENTS`.",
        shown_default="unset")
    admins: tuple[str, ...] = env_setting(
        (), "FTBOT_ADMINS", SLACK, parse.id_list, "Admins (every role, and jobs above the budget cap), as for `FTBOT_AGENTS`.",
        shown_default="unset")
    voters: tuple[str, ...] = env_setting(
        (), "FTBOT_VOTERS", SLACK, parse.id_list, "Who may vote on blind comparisons, as for `FTBOT_AGENTS`; everyone when unset.",
        shown_default="unset")
    system_prompt: str = env_setting(
        DEFAULT_SYSTEM_PROMPT, "FTBOT_SYSTEM_PROMPT", SLACK, parse.text, "The system turn of captured examples.",
        shown_default="a generic support-agent prompt")
    channel_prompts: Mapping[str, str] = env_setting_from(
        lambda: MappingProxyType({}), "FTBOT_CHANNEL_PROMPTS", SLACK, parse.channel_prompts,
        'Per-channel system prompts as JSON, e.g. `{"C0123456789": "You answer billing questions."}`; '
        "`/ft prompt set …` in a channel overrides it (stored in the database).", shown_default="unset")

    # Storage. The home is resolved from the environment even for Settings built by hand: it is where this
    # process and the workers it starts keep their files.
    home: Path = env_setting_from(
        ftbot_home, HOME_VARIABLE, STORAGE, parse.path,
        "Where ftbot keeps its state: the SQLite database, training jobs' files and models, console files.",
        shown_default="`$XDG_DATA_HOME/ftbot`, else `~/.local/share/ftbot`")
    database_url: str | None = env_setting(
        None, DATABASE_URL_VARIABLE, STORAGE, parse.text,
        "SQLAlchemy URL of the database, e.g. `postgresql+psycopg://USER:PASSWORD@HOST:5432/ftbot`.",
        shown_default="SQLite at `$FTBOT_HOME/ftbot.sqlite3`")

    # Data checks.
    prices_file: Path | None = env_setting(
        None, "FTBOT_PRICES_FILE", DATA, parse.path, "The dated price table (TOML) that costs and context limits come from.",
        shown_default="the bundled `trainers/data/prices.toml`")
    max_line_bytes: int = env_setting(
        DEFAULT_MAX_LINE_BYTES, "FTBOT_MAX_LINE_BYTES", DATA, parse.whole_number,
        "A JSONL line longer than this is reported as `line_too_long` without being read into memory.",
        shown_default="16 MiB")

    # Training.
    openai_model: str = env_setting(
        DEFAULT_OPENAI_MODEL, "FTBOT_OPENAI_MODEL", TRAINING, parse.text,
        "OpenAI base model to fine-tune, price and validate for (`/ft price`, `/ft validate`, `ftbot validate/price`). "
        "The deprecated `FTBOT_BASE_MODEL` is read as this one (never as the on-prem base), with a one-line warning.",
        deprecated_name="FTBOT_BASE_MODEL")
    together_model: str = env_setting(
        DEFAULT_TOGETHER_MODEL, "FTBOT_TOGETHER_MODEL", TRAINING, parse.text,
        "Together AI base model to fine-tune with LoRA (`/ft train together`, `ftbot train --backend together`).")
    together_lora_r: int = env_setting(16, "FTBOT_TOGETHER_LORA_R", TRAINING, parse.whole_number, "Together AI: LoRA rank.")
    together_lora_alpha: int = env_setting(
        32, "FTBOT_TOGETHER_LORA_ALPHA", TRAINING, parse.whole_number, "Together AI: LoRA alpha.")
    together_learning_rate: float = env_setting(
        1e-4, "FTBOT_TOGETHER_LEARNING_RATE", TRAINING, parse.number, "Together AI: learning rate.", shown_default="0.0001")
    # None: the cheapest instance type Together offers for the model.
    together_hardware: str | None = env_setting(
        None, "FTBOT_TOGETHER_HARDWARE", TRAINING, parse.text,
        "Together AI dedicated endpoint hardware for `/ft deploy` and `ftbot deploy` (an instance type such as "
        "`1xnvidia-h100-80gb`).", shown_default="the cheapest that serves the model")
    together_idle_minutes: int = env_setting(
        60, "FTBOT_TOGETHER_IDLE_MINUTES", TRAINING, parse.whole_number_between(30, 1440),
        "Together AI dedicated endpoint: minutes without a request before it stops itself (30 to 1440; it bills "
        "per minute while running, even idle).")
    # None: the back end's default (the console trains the bundled SmolLM2 instead).
    local_base_model: str | None = env_setting(
        None, "FTBOT_LOCAL_BASE_MODEL", TRAINING, parse.text,
        "On-prem base model: a Hugging Face id or a directory (the console uses `ftbot:smollm2`, the bundled SmolLM2-135M-Instruct).",
        shown_default=f"`{DEFAULT_LOCAL_BASE_MODEL}`")
    budget_usd: float | None = env_setting(
        None, "FTBOT_BUDGET_USD", TRAINING, parse.number, "Budget cap per job; above it only an admin may start.",
        shown_default="no cap")
    gpu_hour_usd: float = env_setting(
        DEFAULT_GPU_HOUR_USD, "FTBOT_GPU_HOUR_USD", TRAINING, parse.number, "On-prem estimate: price of a GPU-hour (USD).",
        shown_default="2.00")
    local_tokens_per_s: float = env_setting(
        DEFAULT_LOCAL_TOKENS_PER_S, "FTBOT_LOCAL_TOKENS_PER_S", TRAINING, _throughput,
        "On-prem estimate: training throughput (the HF QLoRA 7B/A100 figure; measure yours with `bench/gpu_qlora.py`).",
        shown_default="2,400 tokens/s")
    launcher: str = env_setting(
        "python", "FTBOT_LAUNCHER", TRAINING, _launcher, "`accelerate` runs local training under `accelerate launch`.")
    num_processes: int = env_setting(
        1, "FTBOT_NUM_PROCESSES", TRAINING, parse.whole_number, "Training processes (GPUs) when a job does not set its own.")
    accelerate_config: str | None = env_setting(
        None, "FTBOT_ACCELERATE_CONFIG", TRAINING, parse.text,
        "An `accelerate config` file (FSDP, DeepSpeed, …) that replaces `--multi_gpu`.")
    openai_max_retries: int = env_setting(
        DEFAULT_OPENAI_MAX_RETRIES, "FTBOT_OPENAI_MAX_RETRIES", TRAINING, parse.whole_number,
        "OpenAI client retries on 429/5xx answers (training, generation, the judge).")
    training_poll_seconds: float = env_setting(
        10.0, "FTBOT_TRAINING_POLL_SECONDS", TRAINING, parse.number,
        "How often the bot polls OpenAI / relays a worker's progress, in seconds.")

    # Evaluation: the baseline ("base" = the candidate's base model, "openai:<model>", a registered model or a local
    # base model), how long voting stays open, and the pause between posted comparisons (Slack: ~1 message/s/channel).
    eval_baseline: str | None = env_setting(
        None, "FTBOT_EVAL_BASELINE", EVALUATION, parse.text,
        "The baseline: `base` (the candidate's base model), `openai:<model>`, a registered model, or a local base model.",
        shown_default="`base`")
    eval_hours: float = env_setting(
        24.0, "FTBOT_EVAL_HOURS", EVALUATION, parse.positive(24.0),
        "How long voting stays open, in hours (a scheduler job and the next vote or command close it).")
    eval_post_interval: float = env_setting(
        1.1, "FTBOT_EVAL_POST_INTERVAL", EVALUATION, parse.positive(1.1, allow_zero=True),
        "Seconds between posted comparisons.")
    eval_max_tokens: int = env_setting(
        512, "FTBOT_EVAL_MAX_TOKENS", EVALUATION, parse.whole_number, "Generation: the longest answer, in tokens.")
    eval_temperature: float = env_setting(
        0.0, "FTBOT_EVAL_TEMPERATURE", EVALUATION, parse.number, "Generation: sampling temperature (0 = greedy).")
    eval_batch_size: int = env_setting(
        8, "FTBOT_EVAL_BATCH_SIZE", EVALUATION, parse.whole_number, "Generation: prompts per batch on a local model.")
    judge_model: str = env_setting(
        DEFAULT_JUDGE_MODEL, "FTBOT_JUDGE_MODEL", EVALUATION, parse.text, "The LLM judge for `/ft judge`.")

    inference_url: str | None = env_setting(
        None, "FTBOT_INFERENCE_URL", DRAFTS, parse.text,
        "An OpenAI-compatible inference server for local models' drafts (vLLM with `--enable-lora`, SGLang, llama.cpp's "
        "server, Ollama), e.g. `http://gpu-box:8000/v1`; unset: ftbot keeps the model loaded in a local process.",
        shown_default="unset (embedded)")
    inference_api_key: str | None = env_setting(
        None, "FTBOT_INFERENCE_API_KEY", DRAFTS, parse.text, "Bearer token for `FTBOT_INFERENCE_URL`, if it asks for one. Never logged.",
        secret=True)
    draft_max_tokens: int = env_setting(
        300, "FTBOT_DRAFT_MAX_TOKENS", DRAFTS, parse.whole_number, "The longest draft, in tokens.")
    draft_reply_window_minutes: float = env_setting(
        60.0, "FTBOT_DRAFT_REPLY_WINDOW_MINUTES", DRAFTS, parse.positive(60.0),
        "After a discarded draft, the agent's own reply in the thread within this many minutes becomes a preference pair.")
    draft_expire_hours: float = env_setting(
        24.0, "FTBOT_DRAFT_EXPIRE_HOURS", DRAFTS, parse.positive(24.0), "A draft nobody sent, edited or discarded expires after this.")
    drafts_sent_as_examples: bool = env_setting(
        False, "FTBOT_DRAFTS_SENT_AS_EXAMPLES", DRAFTS, parse.switch,
        "Also store each draft sent as is as a pending training example (edited drafts always are).", shown_default="off")

    # Cluster and artifacts: where model work runs and where its files go.
    ray_address: str | None = env_setting(
        None, "FTBOT_RAY_ADDRESS", CLUSTER, parse.text,
        "A Ray cluster's dashboard address, e.g. `http://gpu-head:8265`: training, merges, evaluation answers and "
        "`eval score` run there as Ray jobs; unset: as child processes of the bot or the CLI.", shown_default="unset (local)")
    ray_num_gpus: float = env_setting(
        1.0, "FTBOT_RAY_NUM_GPUS", CLUSTER, parse.positive(1.0, allow_zero=True),
        "GPUs each Ray job asks for (`entrypoint_num_gpus`; a training job with several processes asks for that many); "
        "0 on a CPU-only cluster.")
    ray_num_cpus: float = env_setting(
        1.0, "FTBOT_RAY_NUM_CPUS", CLUSTER, parse.positive(1.0, allow_zero=True),
        "CPUs each Ray job reserves (`entrypoint_num_cpus`), so the cluster queues jobs instead of overloading a node.")
    ray_runtime_env: Mapping[str, Any] = env_setting_from(
        lambda: MappingProxyType({}), "FTBOT_RAY_RUNTIME_ENV", CLUSTER, parse.json_object,
        'The Ray `runtime_env` of ftbot jobs as JSON, e.g. `{"image_uri": "registry/ftbot-worker:1"}` or '
        '`{"pip": ["ftbot[local,postgres,cluster]"]}`; ftbot adds the `env_vars` its workers need.', shown_default="unset "
        "(the nodes have ftbot installed)")
    ray_python: str = env_setting(
        "python", "FTBOT_RAY_PYTHON", CLUSTER, parse.text, "The Python on the Ray nodes that has ftbot installed.")
    artifacts_url: str | None = env_setting(
        None, "FTBOT_ARTIFACTS_URL", CLUSTER, parse.text,
        "Where adapters, merged models, loss charts and worker logs go: a directory (shared by every node) or "
        "`s3://bucket/prefix` (S3, MinIO, Ceph).", shown_default="`$FTBOT_HOME`")
    artifacts_endpoint_url: str | None = env_setting(
        None, "FTBOT_ARTIFACTS_ENDPOINT_URL", CLUSTER, parse.text,
        "The S3 endpoint of an S3-compatible store, e.g. `http://minio:9000`.", shown_default="AWS S3")

    # Not an environment variable: the local console sets it, so a bot with no base model configured trains the
    # bundled SmolLM2 there (no accounts, no downloads).
    demo_mode: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every variable of ``ENV_VARIABLES`` (blank counts as unset); ConfigError says what to fix."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {"home": ftbot_home(env)}
        for variable in ENV_VARIABLES:
            text = _read(env, variable)
            if text is not None:
                values[variable.field] = variable.parse(variable.name, text)
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
        if not (self.slack_app_token or "").startswith("xapp-"):
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


def _env_variables() -> tuple[EnvVar, ...]:
    variables = []
    for settings_field in fields(Settings):
        variable = settings_field.metadata.get(ENV_VARIABLE_METADATA)
        if variable is not None:
            variables.append(replace(variable, field=settings_field.name))
    return tuple(variables)


# The settings table: every variable ftbot reads, in the order of the fields that declare them.
ENV_VARIABLES: tuple[EnvVar, ...] = _env_variables()


def _read(environ: Mapping[str, str], variable: EnvVar) -> str | None:
    """The variable's text, or its deprecated name's (with a one-line warning per process)."""
    global _warned_deprecated
    text = _value(environ, variable.name)
    if variable.deprecated_name is None:
        return text
    old = _value(environ, variable.deprecated_name)
    if old and not _warned_deprecated:
        _warned_deprecated = True
        what = f"ignored because {variable.name} is set" if text else f"read as {variable.name}"
        log.warning(
            "%s is deprecated and %s (the OpenAI base model); rename it to %s, and set FTBOT_LOCAL_BASE_MODEL "
            "for the on-prem base model", variable.deprecated_name, what, variable.name,
        )
    return text or old


def variable_names() -> set[str]:
    """Every ftbot variable name, deprecated ones included."""
    names = {variable.name for variable in ENV_VARIABLES}
    return names | {variable.deprecated_name for variable in ENV_VARIABLES if variable.deprecated_name}


# --- the README table ----------------------------------------------------------------------------------------------


def _shown_default(variable: EnvVar) -> str:
    if variable.shown_default is not None:
        return variable.shown_default
    value = next(f.default for f in fields(Settings) if f.name == variable.field)
    if value is None:
        return "unset"
    if isinstance(value, str):
        return f"`{value}`"
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown_table() -> str:
    """The README's configuration table: every variable by section, then those that libraries read themselves."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for section in SECTIONS:
        lines.append(f"| **{section}** | | |")
        for variable in (v for v in ENV_VARIABLES if v.section == section):
            lines.append(f"| `{variable.name}` | {_shown_default(variable)} | {variable.doc} |")
    lines.append(f"| **{LIBRARIES}** | | |")
    lines.extend(f"| `{name}` | | {doc} |" for name, doc in LIBRARY_VARIABLES)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
