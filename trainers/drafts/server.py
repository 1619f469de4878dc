"""ftbot's embedded inference server: an OpenAI-compatible HTTP server on 127.0.0.1 that keeps local models loaded.

Drafts from an on-prem model must not start a process or load a model per draft, and torch must stay out of the bot
process. So the bot starts this once (``python -m trainers.drafts.server --port 0``; :class:`ServerProcess` does it)
and talks to it with the ``openai`` client, exactly as it talks to vLLM when ``FTBOT_INFERENCE_URL`` is set.

Routes (the subset of vLLM's OpenAI server that drafts use):

- ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path", "base_model"}``: load ``base_model`` (an HF id, a
  directory, ``ftbot:tiny`` / ``ftbot:smollm2``) with the LoRA adapter at ``lora_path`` (a directory, or a location
  in the remote artifact store, ``s3://…``, downloaded once into ``$FTBOT_HOME/cache/artifacts``) and serve it as
  ``lora_name``. ``base_model`` is ftbot's extension: vLLM serves one base fixed at start, this server loads the
  base each adapter names (without it, the adapter's ``adapter_config.json`` ``base_model_name_or_path``). The name
  already loaded: 400, as vLLM answers. At most ``--max-models`` stay loaded; the least recently used goes first.
- ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``.
- ``POST /v1/chat/completions``: OpenAI's request and response shapes; ``model`` is a loaded name (else 404 with an
  OpenAI-style error body); ``max_completion_tokens`` / ``max_tokens`` honoured; greedy unless ``temperature`` > 0;
  no streaming, one choice. Requests are serialized: one model forward at a time (two at once only share the CPU).
- ``GET /v1/models``, ``GET /health`` (``loads``: how many models this process has loaded, for tests and the bench).

It binds 127.0.0.1 only (no option to change that). Started with ``--token-stdin``, it reads a token from the first line
of its standard input (ftbot makes a random one per process and never puts it in the environment or the command line,
which other users of the machine can read), and every ``/v1`` route wants it as the bearer token, so other users of the machine
cannot load models or read drafts through it. It prints
``listening on http://127.0.0.1:PORT`` as its first stdout line, sends anything it prints later to stderr (nobody
reads the pipe after that line), and exits when its parent process is gone.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from storage.artifacts import is_remote, local_copy
from storage.errors import ArtifactError, ConfigError
from storage.scrub import scrub_credentials
from trainers.evaluation.inference import GenerationError, GenerationSettings

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from trainers.evaluation.inference import Generation, LocalGenerator

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
READY_PREFIX = "listening on "
DEFAULT_MAX_MODELS = 4  # like vLLM's --max-loras 4: a few models in use, previous ones kept warm
DEFAULT_MAX_TOKENS = 512


class RequestError(Exception):
    """A request this server refuses: answered with ``status`` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class LoadedModel:
    name: str
    base_model: str
    adapter: str | None
    generator: LocalGenerator
    created: int


class ModelStore:
    """The loaded models by name, least recently used first; thread-safe."""

    def __init__(self, max_models: int = DEFAULT_MAX_MODELS):
        self.max_models = max(1, max_models)
        self.loads = 0
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()  # the dict
        self._load_lock = threading.Lock()  # one load at a time: two would double the memory peak
        self._forward_lock = threading.Lock()  # one model forward at a time

    def get(self, name: str) -> LoadedModel | None:
        with self._lock:
            model = self._models.get(name)
            if model is not None:
                self._models.move_to_end(name)
            return model

    def models(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())

    def load(self, name: str, base_model: str, adapter: str | None) -> bool:
        """Load and keep ``name``; False when it is already loaded (nothing done)."""
        from trainers.evaluation.inference import LocalGenerator  # Local: the ML stack loads with the first model.

        with self._load_lock:
            if self.get(name) is not None:
                return False
            generator = LocalGenerator(base_model, adapter)
            with self._lock:
                self._models[name] = LoadedModel(name, base_model, adapter, generator, int(time.time()))
                self.loads += 1
                while len(self._models) > self.max_models:
                    evicted, _ = self._models.popitem(last=False)
                    log.info("unloaded %s (more than %d models loaded)", evicted, self.max_models)
            return True

    def unload(self, name: str) -> bool:
        with self._lock:
            return self._models.pop(name, None) is not None

    def generate(self, model: LoadedModel, messages: list[dict[str, Any]], settings: GenerationSettings) -> Generation:
        with self._forward_lock:
            return model.generator.generate([messages], settings, batch_size=1)[0]


# --- the HTTP app ----------------------------------------------------------------------------------------------


def _required_text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RequestError(400, f"'{key}' must be provided (a non-empty string).", param=key)
    return value


def _whole(body: Mapping[str, Any], *keys: str, default: int) -> int:
    for key in keys:
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RequestError(400, f"'{key}' must be a whole number >= 1.", param=key)
            return value
    return default


def _number(body: Mapping[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(400, f"'{key}' must be a number.", param=key)
    return float(value)


def _adapter_base(adapter: str) -> str | None:
    """The base model an adapter was trained on, as PEFT recorded it."""
    try:
        config = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return base if isinstance(base, str) and base else None


def load_request(body: Mapping[str, Any], store: ModelStore) -> tuple[str, str, str | None]:
    """(name, base model, adapter) of a load request, or the RequestError vLLM would answer."""
    name = _required_text(body, "lora_name")
    adapter = body.get("lora_path") or None
    base = body.get("base_model") or None
    if (adapter is not None and not isinstance(adapter, str)) or (base is not None and not isinstance(base, str)):
        raise RequestError(400, "'lora_path' and 'base_model' must be strings.")
    if store.get(name) is not None:
        raise RequestError(400, f"The lora adapter '{name}' has already been loaded.", param="lora_name")
    if adapter is not None and is_remote(adapter):
        # An adapter in the shared artifact store: loaded from this machine's copy (downloaded once).
        try:
            adapter = str(local_copy(adapter))
        except ArtifactError as error:
            raise RequestError(404, f"No adapter found for {adapter}: {error}", type_="NotFoundError",
                               param="lora_path", code="not_found") from None
    elif adapter is not None and not Path(adapter).is_dir():
        raise RequestError(404, f"No adapter found for {adapter}: the directory does not exist on this machine.",
                           type_="NotFoundError", param="lora_path", code="not_found")
    base = base or (_adapter_base(adapter) if adapter else None)
    if base is None:
        raise RequestError(400, "'base_model' must be provided (ftbot's extension: the base model to load the adapter on).",
                           param="base_model")
    return name, base, adapter


def _completion(name: str, generation: Generation, max_tokens: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": generation.text},
            "finish_reason": "length" if generation.completion_tokens >= max_tokens else "stop",
            "logprobs": None,
        }],
        "usage": {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens,
        },
    }


def create_app(store: ModelStore, *, token: str | None = None) -> Starlette:
    """The routes over ``store``; with ``token``, every ``/v1`` route wants ``Authorization: Bearer <token>``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as error:
            raise RequestError(400, f"the request body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        return body

    def authorized(request: Request) -> None:
        if token is not None and not hmac.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}"):
            raise RequestError(401, "Incorrect API key: use the token ftbot started this server with.",
                               code="invalid_api_key")

    def answering_errors(handler: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            try:
                authorized(request)
                return await handler(request)
            except RequestError as error:
                return JSONResponse(error.body(), status_code=error.status)
            except (ConfigError, GenerationError, ArtifactError) as error:
                return JSONResponse(RequestError(400, str(error)).body(), status_code=400)
            except Exception as error:  # the model itself failed: say so, keep serving
                log.exception("request failed")
                return JSONResponse(RequestError(500, f"{type(error).__name__}: {error}", type_="server_error").body(),
                                    status_code=500)

        return wrapped

    @answering_errors
    async def load(request: Request) -> Response:
        # In the thread pool: an adapter in a remote artifact store is downloaded first.
        name, base, adapter = await run_in_threadpool(load_request, await json_body(request), store)
        if not await run_in_threadpool(store.load, name, base, adapter):
            raise RequestError(400, f"The lora adapter '{name}' has already been loaded.", param="lora_name")
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @answering_errors
    async def unload(request: Request) -> Response:
        name = _required_text(await json_body(request), "lora_name")
        if not store.unload(name):
            raise RequestError(404, f"The lora adapter '{name}' cannot be found.", type_="NotFoundError", code="not_found")
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    @answering_errors
    async def chat_completions(request: Request) -> Response:
        body = await json_body(request)
        name = _required_text(body, "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise RequestError(400, "'messages' must be a non-empty list of message objects.", param="messages")
        if body.get("stream"):
            raise RequestError(400, "streaming is not supported by ftbot's embedded server.", param="stream")
        if (body.get("n") or 1) != 1:
            raise RequestError(400, "only n=1 is supported by ftbot's embedded server.", param="n")
        model = store.get(name)
        if model is None:
            raise RequestError(404, f"The model `{name}` does not exist.", type_="NotFoundError", param="model",
                               code="model_not_found")
        max_tokens = _whole(body, "max_completion_tokens", "max_tokens", default=DEFAULT_MAX_TOKENS)
        settings = GenerationSettings(
            max_new_tokens=max_tokens, temperature=_number(body, "temperature", 0.0), top_p=_number(body, "top_p", 1.0),
            seed=int(_number(body, "seed", 0)), batch_size=1,
        )
        generation = await run_in_threadpool(store.generate, model, messages, settings)
        return JSONResponse(_completion(name, generation, max_tokens))

    @answering_errors
    async def models(_request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": m.name, "object": "model", "created": m.created, "owned_by": "ftbot", "root": m.adapter,
             "parent": m.base_model} for m in store.models()
        ]})

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "pid": os.getpid(), "loads": store.loads,
                             "models": [m.name for m in store.models()]})

    return Starlette(routes=[
        Route("/v1/load_lora_adapter", load, methods=["POST"]),
        Route("/v1/unload_lora_adapter", unload, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ])


# --- the child process ----------------------------------------------------------------------------------------


def _exit_with_parent(parent_pid: int) -> None:
    # A bot killed with SIGKILL cannot stop its child: the child notices it was re-parented and leaves.
    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m trainers.drafts.server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: a free one, printed)")
    parser.add_argument("--max-models", type=int, default=DEFAULT_MAX_MODELS, help="models kept loaded at most")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    parser.add_argument("--token-stdin", action="store_true",
                        help="read the bearer token every /v1 route wants from the first line of standard input")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    if args.parent_pid is not None:
        _exit_with_parent(args.parent_pid)

    # Bound here, not by uvicorn, so the port is known before serving; connections wait in the backlog meanwhile.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, args.port))
    sock.listen(128)
    port = sock.getsockname()[1]
    print(f"{READY_PREFIX}http://{LOOPBACK}:{port}", flush=True)
    # Nobody reads stdout after that line: a full pipe would block the server, so anything later goes to stderr.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    token = sys.stdin.readline().strip() or None if args.token_stdin else None
    config = uvicorn.Config(create_app(ModelStore(args.max_models), token=token), log_level="warning", access_log=False,
                            lifespan="off", workers=1, timeout_graceful_shutdown=3)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


# --- the parent's side ----------------------------------------------------------------------------------------


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def _first_line(stream: IO[bytes], timeout: float) -> str | None:
    lines: queue.Queue[bytes] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), name="drafts-server-start", daemon=True).start()
    try:
        return lines.get(timeout=timeout).decode("utf-8", errors="replace").strip()
    except queue.Empty:
        return None


class ServerProcess:
    """A running ``python -m trainers.drafts.server`` child: its URL, its pid, how to stop it."""

    def __init__(self, process: subprocess.Popen[bytes], root_url: str, log_path: Path | None, token: str | None = None):
        self.process = process
        self.token = token  # the bearer token its /v1 routes want (None: none)
        self.root_url = root_url  # http://127.0.0.1:PORT
        self.log_path = log_path
        # Stops the child when the interpreter exits even if nobody called stop().
        self._finalizer = weakref.finalize(self, _stop, process, 5.0)

    @property
    def url(self) -> str:
        """The OpenAI base URL (``…/v1``)."""
        return f"{self.root_url}/v1"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def exited(self, *, within: float = 0.0) -> bool:
        """Whether the process has ended, waiting up to ``within`` seconds for it (a dying child closes its socket
        a moment before it can be reaped)."""
        try:
            self.process.wait(within)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate, then kill after ``timeout`` seconds."""
        self._finalizer.detach()
        _stop(self.process, timeout)

    def log_tail(self, max_chars: int = 1500) -> str:
        if self.log_path is None:
            return ""
        try:
            return scrub_credentials(self.log_path.read_text(encoding="utf-8", errors="replace")[-max_chars:])
        except OSError:
            return ""

    @classmethod
    def start(cls, *, env: Mapping[str, str] | None = None, cwd: str | Path | None = None, log_path: Path | None = None,
              token: str | None = None, max_models: int = DEFAULT_MAX_MODELS, timeout: float = 60.0) -> ServerProcess:
        """Start the server and wait for its ``listening on`` line; its stderr goes to ``log_path`` (appended).

        ``env``: the child's environment (None: this one's); ``token``: the bearer token its routes will want."""
        environment = dict(os.environ if env is None else env)
        command = [sys.executable, "-m", "trainers.drafts.server", "--port", "0", "--max-models", str(max_models),
                   "--parent-pid", str(os.getpid())] + (["--token-stdin"] if token else [])
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        with (log_path.open("ab") if log_path is not None else open(os.devnull, "wb")) as errors:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors,
                                       stdin=subprocess.PIPE if token else subprocess.DEVNULL,
                                       env=environment, cwd=str(cwd) if cwd else None)
        if token:
            assert process.stdin is not None
            process.stdin.write(token.encode() + b"\n")  # the token travels on a pipe only the child reads
            process.stdin.close()
        assert process.stdout is not None
        line = _first_line(process.stdout, timeout)
        process.stdout.close()
        server = cls(process, "", log_path, token)
        if line is None or not line.startswith(READY_PREFIX):
            server.stop()
            why = f"did not start within {timeout:.0f} s" if line is None else f"exited (code {process.returncode})"
            tail = server.log_tail()
            raise GenerationError(f"ftbot's drafting server {why}" + (f": {tail.strip()}" if tail.strip() else "")
                                  + (f" (log: {log_path})" if log_path else ""))
        server.root_url = line.removeprefix(READY_PREFIX).rstrip("/")
        return server


if __name__ == "__main__":
    sys.exit(main())
