"""Answering evaluation prompts: OpenAI chat completions, or batched local generation with transformers.

- OpenAI: the ``openai`` client (it honours ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``), a few requests in flight
  at once, greedy by default (``temperature=0``) with a fixed ``seed``. :func:`estimate_openai_cost` prices a
  round with the dated table in ``trainers/data/prices.toml`` before any money is spent.
- Local: the base model plus the LoRA adapter from the registry, the tokenizer's chat template, left padding,
  prompts sorted by length into batches (less padding), greedy or seeded sampling. torch/transformers/peft are
  imported inside the functions: the bot runs local generation in a worker process (``python -m trainers.evaluation.generation``).

No Slack, no database here (``trainers.evaluation.generation`` connects this to evaluation rounds).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from storage.artifacts import is_remote, local_copy
from storage.config import DEFAULT_OPENAI_MAX_RETRIES, Settings, ftbot_home
from storage.errors import ConfigError, FtbotError
from trainers.data.pii import redact_record
from trainers.data.pricing import PriceTable, inference_cost, load_price_table
from trainers.data.tokens import count_record_tokens, encoding_for_model
from trainers.training.local.base_models import resolve_base_model
from trainers.training.local.data import hf_chat_message
from trainers.training.local.train import embedding_rows
from trainers.training.openai_backend import make_client

if TYPE_CHECKING:
    from openai import OpenAI
    from peft import PeftModel
    from transformers import PreTrainedModel

# A conversation: OpenAI chat messages (JSON objects, or the SDK's message TypedDicts).
Messages = Sequence[Mapping[str, Any]]


class GenerationError(FtbotError):
    """A model could not answer: evaluation prompts, or a draft (``trainers.drafts.generate``)."""


@dataclass(frozen=True)
class ModelSpec:
    """How to run one side of a comparison.

    ``backend`` "openai": ``model`` is the OpenAI model id (``ft:…`` or a base model).
    ``backend`` "local": ``model`` is the base model (HF id, directory or ``ftbot:tiny``), ``adapter`` the LoRA
    adapter directory of a fine-tuned model (None: the base model itself); either may be a location in a remote
    artifact store (``s3://…``), read through this machine's copy.
    """

    name: str
    backend: str
    model: str
    adapter: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("openai", "local"):
            raise ConfigError(f"model back end must be 'openai' or 'local', got {self.backend!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8

    @classmethod
    def from_settings(cls, settings: Settings) -> GenerationSettings:
        """The configured answer length, temperature and local batch size (``FTBOT_EVAL_*``)."""
        return cls(max_new_tokens=settings.eval_max_tokens, temperature=settings.eval_temperature,
                   batch_size=settings.eval_batch_size)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int


# --- OpenAI --------------------------------------------------------------------------------------------------


CHAT_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


def chat_messages(messages: Messages) -> list[dict[str, Any]]:
    """The messages with only what chat completions accepts: training-only keys such as ``weight`` would be rejected."""
    return [{k: m[k] for k in CHAT_MESSAGE_KEYS if k in m and m[k] is not None} for m in messages]


def openai_messages(messages: Messages) -> list[dict[str, Any]]:
    """:func:`chat_messages` with personal data redacted: what leaves the premises for OpenAI (evaluation, drafts).

    Prompts come from customers' threads, so emails, phone numbers, cards… become typed placeholders first."""
    return redact_record({"messages": chat_messages(messages)})[0]["messages"]


def generate_openai(
    model: str,
    prompts: Sequence[Messages],
    settings: GenerationSettings = GenerationSettings(),
    *,
    client: OpenAI | None = None,
    max_retries: int = DEFAULT_OPENAI_MAX_RETRIES,
    concurrency: int = 4,
    on_done: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Answer every prompt with one chat completion each, a few in flight; answers in prompt order.

    ``client``: the OpenAI client to use; None: one that retries 429/5xx ``max_retries`` times."""
    openai_client = make_client(client, max_retries=max_retries)

    def one(index_and_prompt: tuple[int, Messages]) -> Generation:
        index, prompt = index_and_prompt
        kwargs: dict[str, Any] = dict(
            model=model,
            messages=openai_messages(prompt),
            max_completion_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            seed=settings.seed,
        )
        if settings.top_p != 1.0:
            kwargs["top_p"] = settings.top_p
        try:
            response = openai_client.chat.completions.create(**kwargs)
        except Exception as error:  # the openai package's APIError family and connection errors
            message = getattr(error, "message", None) or str(error)
            status = getattr(error, "status_code", None)
            raise GenerationError(
                f"OpenAI could not answer with {model}: {message}" + (f" (HTTP {status})" if status else "")
                + ". Check OPENAI_API_KEY, the model name and your quota, then run /ft eval again."
            ) from error
        choice = response.choices[0]
        usage = response.usage
        if on_done is not None:
            on_done(index)
        return Generation(
            text=(choice.message.content or "").strip(),
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        )

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="ftbot-openai") as pool:
        return list(pool.map(one, enumerate(prompts)))


@dataclass(frozen=True)
class CostEstimate:
    model: str
    prompts: int
    input_tokens: int
    expected_output_tokens: int
    max_output_tokens: int
    expected_usd: float | None  # None: the price table has no figure for this model
    max_usd: float | None
    prices_as_of: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def estimate_openai_cost(
    model: str,
    prompts: Sequence[Messages],
    settings: GenerationSettings = GenerationSettings(),
    *,
    expected_answer_tokens: float | None = None,
    prices: PriceTable | None = None,
) -> CostEstimate:
    """What answering `prompts` with `model` costs: input tokens × input price + output tokens × output price.

    Output is unknown before generation: the expected figure uses `expected_answer_tokens` (e.g. the mean length
    of the team's reference replies), else half the token limit; the maximum uses the full limit. `prices`: the
    price table (``load_price_table(settings.prices_file)``; None: the bundled one).
    """
    encoding = encoding_for_model(model)
    input_tokens = sum(count_record_tokens({"messages": openai_messages(p)}, encoding).total for p in prompts)
    per_answer = expected_answer_tokens if expected_answer_tokens is not None else settings.max_new_tokens / 2
    expected_out = int(round(min(per_answer, settings.max_new_tokens) * len(prompts)))
    max_out = settings.max_new_tokens * len(prompts)
    table = prices or load_price_table()
    price = table.find(model)
    fine_tuned = model.startswith("ft:")
    expected = maximum = None
    if price is not None:
        expected = inference_cost(price, input_tokens=input_tokens, output_tokens=expected_out, fine_tuned=fine_tuned)
        maximum = inference_cost(price, input_tokens=input_tokens, output_tokens=max_out, fine_tuned=fine_tuned)
    return CostEstimate(model, len(prompts), input_tokens, expected_out, max_out, expected, maximum, table.as_of)


def mean_answer_tokens(answers: Sequence[str], model: str) -> float | None:
    """Mean token count of reference answers (for the cost estimate); None without any."""
    texts = [a for a in answers if a]
    if not texts:
        return None
    encoding = encoding_for_model(model)
    return statistics.fmean(len(encoding.encode_ordinary(t)) for t in texts)


# --- local -----------------------------------------------------------------------------------------------------


class LocalGenerator:
    """A loaded local model (base + optional LoRA adapter) that answers chat prompts in batches.

    Load once, call :meth:`generate` as often as needed (the benchmark and the tests compare batch sizes on
    one loaded model). Greedy decoding with left padding gives the same tokens whatever the batch size.
    """

    def __init__(self, base_model: str, adapter: str | None = None, *, cache_dir: str | Path | None = None,
                 device: str | None = None):
        # Local: torch and transformers load only in the process that generates (the worker, tests, benchmarks).
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # Models in a remote artifact store (FTBOT_ARTIFACTS_URL=s3://…) load from this machine's copy of them.
        if is_remote(base_model):
            base_model = str(local_copy(base_model))
        if adapter and is_remote(adapter):
            adapter = str(local_copy(adapter))
        cache = Path(cache_dir) if cache_dir is not None else _models_dir()
        resolved = resolve_base_model(base_model, cache)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        # The adapter directory holds the tokenizer used in training (it may have added a pad token).
        tokenizer_source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else resolved
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
            base = AutoModelForCausalLM.from_pretrained(resolved, dtype=dtype)
        except OSError as error:
            raise ConfigError(
                f"cannot load model {base_model!r}: {error}. Point the model at a local directory or a cached Hugging Face id."
            ) from error
        if len(self.tokenizer) > embedding_rows(base):
            base.resize_token_embeddings(len(self.tokenizer))
        model: PreTrainedModel | PeftModel = base
        if adapter:
            from peft import PeftModel  # Local: heavy, like torch above.

            if not Path(adapter).is_dir():
                raise ConfigError(f"adapter directory {adapter} does not exist; was the model's job directory removed?")
            model = PeftModel.from_pretrained(base, adapter)
        if self.tokenizer.pad_token is None:
            # Generation needs *a* pad id for batching; unlike training, pad = eos is harmless here.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens follow the prompt, padding goes before it
        # PreTrainedModel.to is wrapped with functools.wraps(nn.Module.to), which mypy cannot bind as a method.
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]

    def _prompt_text(self, messages: Messages) -> str:
        if not self.tokenizer.chat_template:
            raise ConfigError(
                "this model's tokenizer has no chat template, so it cannot answer chat prompts; "
                "evaluate an instruct/chat model (or one fine-tuned by ftbot, which saves its template)."
            )
        text = self.tokenizer.apply_chat_template(
            [hf_chat_message(m) for m in messages], tokenize=False, add_generation_prompt=True
        )
        # transformers types every shape the method can return; with tokenize=False it is the rendered text.
        return cast(str, text)

    def generate(self, prompts: Sequence[Messages], settings: GenerationSettings = GenerationSettings(),
                 *, batch_size: int | None = None, on_batch: Callable[[int], None] | None = None) -> list[Generation]:
        import torch  # Local: see __init__.

        size = max(1, batch_size or settings.batch_size)
        texts = [self._prompt_text(p) for p in prompts]
        lengths = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        # Longest first: similar lengths share a batch (less padding), and a memory error shows up at once.
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        results: list[Generation | None] = [None] * len(texts)
        eos_ids = self._eos_ids()
        done = 0
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            # The template already holds any special tokens; adding them again would double a BOS.
            encoded = self.tokenizer(
                [texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            kwargs: dict[str, Any] = dict(
                max_new_tokens=settings.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos_ids,
            )
            if settings.temperature > 0:
                torch.manual_seed(settings.seed + start)
                kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            with torch.inference_mode():
                output = self.model.generate(**encoded, **kwargs)
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            for row, index in enumerate(batch):
                tokens = new_tokens[row].tolist()
                tokens = _cut_at_stop(tokens, eos_ids, self.tokenizer.pad_token_id)
                # One sequence of ids decodes to one string (transformers types the batch form too).
                text = cast(str, self.tokenizer.decode(tokens, skip_special_tokens=True))
                results[index] = Generation(
                    text=text.strip(),
                    prompt_tokens=lengths[index],
                    completion_tokens=len(tokens),
                )
            done += len(batch)
            if on_batch is not None:
                on_batch(done)
        return [r for r in results if r is not None]

    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        return sorted(i for i in ids if i is not None)


def _cut_at_stop(tokens: list[int], eos_ids: list[int], pad_id: int | None) -> list[int]:
    for position, token in enumerate(tokens):
        if token in eos_ids or token == pad_id:
            return tokens[:position]
    return tokens


def _models_dir() -> Path:
    return ftbot_home() / "models"


def generate_local(spec: ModelSpec, prompts: Sequence[Messages], settings: GenerationSettings = GenerationSettings(),
                   *, batch_size: int | None = None, on_batch: Callable[[int], None] | None = None) -> list[Generation]:
    generator = LocalGenerator(spec.model, spec.adapter)
    return generator.generate(prompts, settings, batch_size=batch_size, on_batch=on_batch)


def generate(spec: ModelSpec, prompts: Sequence[Messages], settings: GenerationSettings = GenerationSettings(),
             *, openai_client: OpenAI | None = None) -> list[Generation]:
    """Answer `prompts` with the model `spec` describes."""
    if spec.backend == "openai":
        return generate_openai(spec.model, prompts, settings, client=openai_client)
    return generate_local(spec, prompts, settings)
