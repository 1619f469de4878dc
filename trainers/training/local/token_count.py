"""Counting a local base model's own tokens for the training quote, without loading transformers in the bot.

The quote runs in the bot's process, which never imports torch or transformers. A model directory holds what the
count needs: ``tokenizer.json`` (read by the small ``tokenizers`` library) and the chat template (rendered with
jinja2 the way transformers renders it: trimmed blocks, ``{% generation %}`` markers, ``raise_exception``). The
count is the rendered conversation's tokens, cut at the run's ``max_length`` — what the trainer feeds the model.

When the tokenizer is not on this machine yet (a hub id not downloaded, ``ftbot:smollm2`` not converted yet) or the
libraries are missing, :func:`local_token_counter` returns None and the quote falls back to an OpenAI encoding.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from trainers.training.local.base_models import SMOLLM2_DIRECTORY, is_converted, smollm2_gguf
from trainers.training.local.config import SMOLLM2_BASE_MODEL, TINY_BASE_MODEL
from trainers.training.local.data import hf_chat_message

Messages = Sequence[Mapping[str, Any]]
TokenCounter = Callable[[Messages], int]


def tokenizer_directory(base_model: str, models_dir: Path) -> Path | None:
    """Where ``base_model``'s tokenizer already is on this machine (nothing is built, converted or downloaded)."""
    if base_model == TINY_BASE_MODEL:
        candidate = models_dir / "tiny-model"
    elif base_model == SMOLLM2_BASE_MODEL:
        candidate = models_dir / SMOLLM2_DIRECTORY
        try:
            if not is_converted(candidate, smollm2_gguf()):
                return None
        except Exception:  # noqa: BLE001 - the package is missing: the quote's base model check says so
            return None
    elif Path(base_model).expanduser().is_dir():
        candidate = Path(base_model).expanduser()
    else:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        try:
            cached = try_to_load_from_cache(base_model, "tokenizer.json")
        except Exception:  # noqa: BLE001 - not a valid hub id: the quote's base model check says so
            return None
        if not isinstance(cached, str):
            return None
        candidate = Path(cached).parent
    return candidate if (candidate / "tokenizer.json").is_file() else None


def _chat_template(directory: Path) -> tuple[str | None, dict[str, Any]]:
    config: dict[str, Any] = {}
    config_file = directory / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
    template_file = directory / "chat_template.jinja"
    template = template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return (template if isinstance(template, str) else None), config


def _special(config: Mapping[str, Any], name: str) -> str:
    value = config.get(name)
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def local_token_counter(base_model: str, models_dir: Path, *, max_length: int) -> TokenCounter | None:
    """A function counting the tokens the trainer sees for one conversation, or None (see the module docstring)."""
    directory = tokenizer_directory(base_model, models_dir)
    if directory is None:
        return None
    try:
        import jinja2
        from jinja2.ext import Extension
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import Tokenizer
    except ImportError:
        return None
    template_text, config = _chat_template(directory)
    if not template_text:
        return None

    class GenerationBlocks(Extension):
        """``{% generation %}…{% endgeneration %}``: rendered as is (they only mark the assistant's tokens)."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[GenerationBlocks, "jinja2.ext.loopcontrols"])
    environment.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    environment.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    template = environment.from_string(template_text)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    specials = {name: _special(config, name) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}

    def count(messages: Messages) -> int:
        text = template.render(messages=[hf_chat_message(m) for m in messages], add_generation_prompt=False, **specials)
        return min(len(tokenizer.encode(text, add_special_tokens=False).ids), max_length)

    return count
