"""Writing a draft reply with the model in use: OpenAI, an OpenAI-compatible inference server, or ftbot's own.

:class:`DraftService` is built once per bot process and shared by every thread that drafts (it is thread-safe);
:meth:`DraftService.close` at shutdown. Each draft is one chat completion through the ``openai`` client, greedy.

- OpenAI models (``backend == "openai"``, ``location`` the ``ft:`` id): personal data is redacted first (the same
  redaction as evaluation prompts), ``max_completion_tokens`` is ``FTBOT_DRAFT_MAX_TOKENS``, and the cost comes from
  the dated price table (``FTBOT_PRICES_FILE``).
- Local models (Together AI ones too: their adapters were brought home) with ``FTBOT_INFERENCE_URL``
  (e.g. ``http://gpu-box:8000/v1``): requests name the *registered* model
  (``model=<name>``); :meth:`DraftService.activate` (at ``/ft use``) loads the adapter with vLLM's runtime LoRA API,
  ``POST <root>/v1/load_lora_adapter {"lora_name": <name>, "lora_path": <adapter dir>}``, and a draft answered 404
  (model not found: the server restarted, or nobody activated it) loads it and retries once. Prompts stay unredacted:
  the server is on the premises. Start vLLM for ftbot's adapters with::

      VLLM_ALLOW_RUNTIME_LORA_UPDATING=true vllm serve <base model> --enable-lora --max-lora-rank 16 --max-loras 4

  ``<base model>`` is the models' base (``ftbot models`` shows it; for ``ftbot:smollm2`` use
  ``HuggingFaceTB/SmolLM2-135M-Instruct``), ``--max-lora-rank`` at least the rank trained with (16 by default), and the
  adapter directory must be readable by the server at the same path (a shared volume), or loaded at start with
  ``--lora-modules <name>=<dir>`` instead. With a remote artifact store (``FTBOT_ARTIFACTS_URL=s3://…``) the
  ``lora_path`` sent is the adapter's ``s3://`` URL, which vLLM does not download: give the server the store as a
  mounted directory (``FTBOT_ARTIFACTS_URL`` a shared directory) or load the adapters at its start.
  ``FTBOT_INFERENCE_API_KEY`` is sent as the bearer token (vLLM's ``--api-key``). Other servers:

  - SGLang (``--enable-lora --lora-paths <name>=<dir>``) loads at ``POST <root>/load_lora_adapter`` (no ``/v1``)
    and picks an adapter with ``model="<base>:<name>"``, neither of which ftbot sends: merge the adapter into its
    base (PEFT's ``merge_and_unload``) and serve that with ``--served-model-name <name>`` (``activate`` then says
    the server has no runtime LoRA API, and drafts work), or use vLLM.
  - llama.cpp's ``llama-server``: no loading by path; convert the adapter (``convert_lora_to_gguf.py``) and start
    ``llama-server -m <base>.gguf --lora <adapter>.gguf --alias <name>``: one adapter per server.
  - Ollama: a Modelfile ``FROM <base>`` + ``ADAPTER <dir>``, ``ollama create <name> -f Modelfile``, and
    ``FTBOT_INFERENCE_URL=http://host:11434/v1``; Ollama loads the model at its first request.

- Local models without a server: ftbot's embedded server (``trainers/drafts/server.py``), a child process started
  once, at the first draft or activation, that keeps the models loaded (the load call carries ``base_model``, so it
  knows which base to load each adapter on; the service loads a model before its first draft). Same client path as
  for vLLM; an adapter in a remote artifact store is downloaded once into ``$FTBOT_HOME/cache/artifacts`` by that
  process. If the child dies, the next draft starts a new one. Its log is ``$FTBOT_HOME/drafts/server.log``.

``DraftText.generation_ms`` is the time spent waiting for the model side: the completion, plus any start or load the
draft had to wait for (so the caller's "overhead" — total minus generation — is ftbot's own).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from storage.config import HOME_VARIABLE, Settings, default_database_url
from storage.errors import ConfigError
from storage.models import RegisteredModel
from storage.scrub import scrub_credentials
from storage.vocabulary import TrainingBackend
from trainers.data.pricing import inference_cost, load_price_table
from trainers.drafts.server import ServerProcess
from trainers.evaluation.inference import GenerationError, chat_messages, openai_messages
from trainers.training.openai_backend import make_client
from trainers.worker_processes import PACKAGE_ROOT, worker_environment

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.chat import ChatCompletion

log = logging.getLogger(__name__)

T = TypeVar("T")

# Back ends whose models run on the premises as base model + LoRA adapter directory: a Together AI fine-tune is
# downloaded when it finishes and runs like an on-prem one.
RUNS_ON_PREM = frozenset({TrainingBackend.LOCAL, TrainingBackend.TOGETHER})

DEFAULT_REQUEST_TIMEOUT_S = 300.0  # a long draft on a busy CPU; the Slack side shows its own "drafting…" meanwhile
EMBEDDED_START_TIMEOUT_S = 120.0


class LoadOutcome(StrEnum):
    """What asking a server to load an adapter did."""

    LOADED = "loaded"
    ALREADY_LOADED = "already_loaded"  # vLLM's 400 "has already been loaded": fine
    NO_RUNTIME_API = "no_runtime_api"  # the route is missing (SGLang, llama.cpp, Ollama, vLLM without the switch)


@dataclass(frozen=True)
class DraftText:
    text: str
    prompt: list[dict]  # the messages as sent (PII redacted when they left for OpenAI)
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None  # None: a local model, or no price for the model in the table
    generation_ms: int


@dataclass
class _Endpoint:
    """An OpenAI-compatible server for local models: FTBOT_INFERENCE_URL, or the embedded child process."""

    client: OpenAI
    url: str  # the client's base URL (…/v1)
    load_url: str
    process: ServerProcess | None = None  # None: an external server
    loaded: set[str] = field(default_factory=set)  # names this service loaded there (a restarted server forgets them)
    load_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def embedded(self) -> bool:
        return self.process is not None


def _root(url: str) -> str:
    root = url.rstrip("/")
    return root.removesuffix("/v1")


def _error_text(error: Exception) -> str:
    message = getattr(error, "message", None) or str(error)
    status = getattr(error, "status_code", None)
    return scrub_credentials(f"{message} (HTTP {status})" if status else message)


def _elapsed_ms(started: float) -> int:
    return int(round((time.perf_counter() - started) * 1000))


class DraftService:
    """Drafts replies with registered models. Thread-safe: one instance for the whole bot; :meth:`close` at shutdown."""

    def __init__(self, settings: Settings, *, openai_client: OpenAI | None = None,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, start_timeout_s: float = EMBEDDED_START_TIMEOUT_S):
        self.settings = settings
        self._given_openai_client = openai_client
        self._openai: OpenAI | None = None
        self._server: _Endpoint | None = None  # FTBOT_INFERENCE_URL
        self._embedded: _Endpoint | None = None
        self._request_timeout_s = request_timeout_s
        self._start_timeout_s = start_timeout_s
        self._lock = threading.Lock()  # creating clients, starting and stopping the embedded process
        self._closed = False

    # --- the contract ---------------------------------------------------------------------------------------

    def generate(self, model: RegisteredModel, messages: list[dict]) -> DraftText:
        """A draft answering ``messages`` (system + conversation) with ``model``; raises GenerationError/ConfigError."""
        if model.backend == TrainingBackend.OPENAI:
            return self._generate_openai(model, messages)
        if model.backend in RUNS_ON_PREM:
            return self._generate_local(model, messages)
        raise ConfigError(f"model {model.name} has back end {model.backend!r}; drafts need 'openai', 'local' or 'together'")

    def activate(self, model: RegisteredModel) -> str | None:
        """Prepare ``model`` for drafting (at ``/ft use``): load it into the inference server or the embedded one.

        Returns a line for the user, or None when there is nothing to do (OpenAI models). Slow for embedded models
        (starts the process, loads the model: seconds): call it off the request's acknowledgement path."""
        if model.backend == TrainingBackend.OPENAI:
            try:
                self._openai_client()  # imports and builds the client now, not during the first draft
            except ConfigError:
                pass  # a missing OPENAI_API_KEY: the first draft says so
            return None
        if model.backend not in RUNS_ON_PREM:
            raise ConfigError(f"model {model.name} has back end {model.backend!r}; drafts need 'openai', 'local' or 'together'")
        started = time.perf_counter()
        endpoint = self._local_endpoint()
        with endpoint.load_lock:
            outcome = LoadOutcome.ALREADY_LOADED if model.name in endpoint.loaded else self._load(endpoint, model)
        where = "ftbot's drafting process" if endpoint.embedded else f"the inference server at {endpoint.url}"
        if outcome == LoadOutcome.NO_RUNTIME_API:
            return (f"{where} has no runtime LoRA API ({endpoint.load_url} answered 404): drafts ask it for the model "
                    f"named {model.name}, so serve the adapter under that name there (or start vLLM with "
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true).")
        if outcome == LoadOutcome.ALREADY_LOADED:
            return f"{model.name} is already loaded into {where}: drafts are ready."
        if endpoint.embedded:
            return f"Loaded {model.name} (base {model.base_model}) into {where} in {time.perf_counter() - started:.1f} s."
        return f"Loaded {model.name} into {where}"

    def close(self) -> None:
        """Stop the embedded process (terminate, then kill) and close the clients. Idempotent; drafts fail after it."""
        with self._lock:
            self._closed = True
            endpoints = [e for e in (self._embedded, self._server) if e is not None]
            self._embedded = self._server = None
            # A client the caller passed in is theirs to close.
            own_openai = self._openai if self._given_openai_client is None else None
            self._openai = None
        for endpoint in endpoints:
            if endpoint.process is not None:
                endpoint.process.stop()
            endpoint.client.close()
        if own_openai is not None:
            own_openai.close()

    def __enter__(self) -> DraftService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- for tests, the bench and status lines ----------------------------------------------------------------

    @property
    def embedded_process(self) -> ServerProcess | None:
        """The embedded server process, if one was started (it may have died since)."""
        endpoint = self._embedded
        return endpoint.process if endpoint is not None else None

    # --- OpenAI --------------------------------------------------------------------------------------------

    def _openai_client(self) -> OpenAI:
        with self._lock:
            if self._closed:
                raise GenerationError("the draft service is closed (the bot is shutting down)")
            if self._openai is None:
                self._openai = make_client(self._given_openai_client, max_retries=self.settings.openai_max_retries)
            return self._openai

    def _generate_openai(self, model: RegisteredModel, messages: list[dict]) -> DraftText:
        prompt = openai_messages(messages)
        client = self._openai_client()
        started = time.perf_counter()
        try:
            response = self._complete(client, model.location, prompt, max_completion_tokens=self.settings.draft_max_tokens)
        except Exception as error:  # the openai package's APIError family and connection errors
            raise GenerationError(
                f"OpenAI could not draft with {model.name} ({model.location}): {_error_text(error)}. "
                "Check OPENAI_API_KEY, the model and your quota."
            ) from error
        draft = self._draft(response, prompt, _elapsed_ms(started))
        price = load_price_table(self.settings.prices_file).find(model.location)
        if price is None:
            return draft
        cost = inference_cost(price, input_tokens=draft.prompt_tokens, output_tokens=draft.completion_tokens, fine_tuned=True)
        return replace(draft, cost_usd=cost)

    # --- local: an inference server or the embedded one ----------------------------------------------------

    def _generate_local(self, model: RegisteredModel, messages: list[dict]) -> DraftText:
        import openai  # Local: ~0.3 s to import; make_client defers it too.

        prompt = chat_messages(messages)
        started = time.perf_counter()
        endpoint = self._local_endpoint()
        if endpoint.embedded:
            self._ensure_loaded(endpoint, model)

        def complete() -> ChatCompletion:
            return self._complete(endpoint.client, model.name, prompt, max_tokens=self.settings.draft_max_tokens)

        try:
            response = complete()
        except openai.NotFoundError as error:
            # The server does not know the model (restarted, evicted it, or nobody activated it): load it, retry once.
            if self._load(endpoint, model) == LoadOutcome.NO_RUNTIME_API:
                raise self._failure(endpoint, model, f"{_error_text(error)}, and the server has no runtime LoRA API to "
                                    f"load {model.location} with: serve the adapter there under the model name "
                                    f"{model.name}") from error
            response = self._answering(endpoint, model, complete)
        except openai.APIConnectionError as error:
            if endpoint.process is None or not endpoint.process.exited(within=1.0):
                raise self._failure(endpoint, model, _error_text(error)) from error
            # The embedded child died under this request: start a new one, once.
            endpoint = self._local_endpoint()
            self._ensure_loaded(endpoint, model)
            response = self._answering(endpoint, model, complete)
        except openai.APIError as error:
            raise self._failure(endpoint, model, _error_text(error)) from error
        return self._draft(response, prompt, _elapsed_ms(started))

    def _answering(self, endpoint: _Endpoint, model: RegisteredModel, call: Callable[[], T]) -> T:
        """``call()``, with the openai package's errors turned into a GenerationError that says what failed."""
        import openai  # Local: see _generate_local.

        try:
            return call()
        except openai.APIError as error:
            raise self._failure(endpoint, model, _error_text(error)) from error

    def _failure(self, endpoint: _Endpoint, model: RegisteredModel, why: str) -> GenerationError:
        if endpoint.process is not None:
            tail = endpoint.process.log_tail(600).strip()
            return GenerationError(f"ftbot's drafting process could not draft with {model.name}: {why}"
                                   + (f". Its log ends: {tail}" if tail else ""))
        return GenerationError(f"the inference server at {endpoint.url} could not draft with {model.name}: {why}. "
                               "Check FTBOT_INFERENCE_URL and that the server runs.")

    def _local_endpoint(self) -> _Endpoint:
        with self._lock:
            if self._closed:
                raise GenerationError("the draft service is closed (the bot is shutting down)")
            if self.settings.inference_url:
                if self._server is None:
                    self._server = self._external_endpoint(self.settings.inference_url)
                return self._server
            if self._embedded is not None and self._embedded.process is not None:
                if self._embedded.process.alive():
                    return self._embedded
                log.warning("ftbot's drafting process %d exited (code %s); starting a new one",
                            self._embedded.process.pid, self._embedded.process.process.returncode)
                self._embedded.process.stop()
                self._embedded.client.close()
            # Started under the lock: concurrent first drafts wait for this one process instead of starting several.
            self._embedded = self._start_embedded()
            return self._embedded

    def _external_endpoint(self, url: str) -> _Endpoint:
        import openai  # Local: see _generate_local.

        client = openai.OpenAI(base_url=url, api_key=self.settings.inference_api_key or "none",
                               max_retries=self.settings.openai_max_retries, timeout=self._request_timeout_s)
        return _Endpoint(client, url, f"{_root(url)}/v1/load_lora_adapter")

    def _start_embedded(self) -> _Endpoint:
        import openai  # Local: see _generate_local.

        settings = self.settings
        environment = worker_environment(settings.database_url or default_database_url(),
                                          {HOME_VARIABLE: str(settings.home), "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
        started = time.perf_counter()
        process = ServerProcess.start(env=environment, cwd=PACKAGE_ROOT, log_path=settings.home / "drafts" / "server.log",
                                      token=secrets.token_urlsafe(24), timeout=self._start_timeout_s)
        log.info("started ftbot's drafting process %d at %s in %d ms", process.pid, process.url, _elapsed_ms(started))
        # No retries: on loopback a refused connection means the child died, which generate handles by restarting.
        client = openai.OpenAI(base_url=process.url, api_key=process.token or "none", max_retries=0,
                               timeout=self._request_timeout_s)
        return _Endpoint(client, process.url, f"{process.root_url}/v1/load_lora_adapter", process)

    def _ensure_loaded(self, endpoint: _Endpoint, model: RegisteredModel) -> None:
        if model.name in endpoint.loaded:  # the hot path: no lock, no request
            return
        with endpoint.load_lock:  # one load per model, even when its first drafts arrive together
            if model.name not in endpoint.loaded:
                self._load(endpoint, model)

    def _load(self, endpoint: _Endpoint, model: RegisteredModel) -> LoadOutcome:
        """Load the model's adapter into the server (vLLM's runtime LoRA API; the embedded server speaks it too)."""
        import openai  # Local: see _generate_local.

        body: dict[str, Any] = {"lora_name": model.name, "lora_path": model.location}
        if endpoint.embedded:
            body["base_model"] = model.base_model  # ftbot's extension: the embedded server loads any base
        try:
            endpoint.client.post(endpoint.load_url, body=body, cast_to=str)
        except openai.BadRequestError as error:
            if "already" not in _error_text(error).lower():  # vLLM: "The lora adapter 'x' has already been loaded."
                raise self._load_failure(endpoint, model, error) from error
            outcome = LoadOutcome.ALREADY_LOADED
        except openai.NotFoundError as error:
            # vLLM answers 404 "No adapter found" for a path it cannot read; any other 404 is a missing route.
            if "adapter" in _error_text(error).lower():
                raise self._load_failure(endpoint, model, error) from error
            return LoadOutcome.NO_RUNTIME_API
        except openai.APIError as error:  # other statuses, and connection errors
            raise self._load_failure(endpoint, model, error) from error
        else:
            outcome = LoadOutcome.LOADED
        endpoint.loaded.add(model.name)
        return outcome

    def _load_failure(self, endpoint: _Endpoint, model: RegisteredModel, error: Exception) -> GenerationError:
        return self._failure(endpoint, model, f"loading the adapter {model.location} failed: {_error_text(error)}")

    # --- shared ----------------------------------------------------------------------------------------------

    @staticmethod
    def _complete(client: OpenAI, model: str, prompt: list[dict[str, Any]], **limits: int) -> ChatCompletion:
        # Greedy: a draft is a suggestion the agent judges, the same thread should get the same draft.
        kwargs: dict[str, Any] = dict(model=model, messages=prompt, temperature=0, **limits)
        return client.chat.completions.create(**kwargs)

    @staticmethod
    def _draft(response: ChatCompletion, prompt: list[dict], generation_ms: int) -> DraftText:
        if not response.choices:
            raise GenerationError(f"the model {response.model} answered without a choice")
        usage = response.usage
        return DraftText(
            text=(response.choices[0].message.content or "").strip(),
            prompt=prompt,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            cost_usd=None,
            generation_ms=generation_ms,
        )
