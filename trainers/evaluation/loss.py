"""Held-out assistant-token loss: how surprised a model is by the team's own replies to questions it never trained on.

The figure is the mean negative log-likelihood (nats) per assistant token, over every assistant token of every
held-out conversation together (long replies weigh more, as in the trainer's own validation loss). Assistant tokens
are the ones the chat template marks with ``{% generation %}`` (the same template, and so the same tokens, that
training uses); the end-of-turn token is included, so a model that does not know when to stop pays for it.

torch is imported inside the functions: only worker processes, the CLI, tests and benchmarks call them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from storage.errors import ConfigError
from trainers.training.local.chat_template import ensure_generation_markers
from trainers.training.local.data import hf_chat_message

Conversation = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class HeldoutLoss:
    """Mean NLL per assistant token, and what it was measured on."""

    loss: float
    tokens: int
    conversations: int


@dataclass(frozen=True)
class TokenizedConversation:
    input_ids: list[int]
    assistant_mask: list[int]  # 1 where the token belongs to an assistant reply (its end-of-turn token included)


def tokenize_conversation(tokenizer: Any, messages: Conversation, *, max_length: int) -> TokenizedConversation:
    """The conversation as the training template renders it, cut to ``max_length`` tokens like training cuts it."""
    encoded = tokenizer.apply_chat_template(
        [hf_chat_message(m) for m in messages], tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
    )
    ids = list(encoded["input_ids"])[:max_length]
    mask = list(encoded["assistant_masks"])[:max_length]
    return TokenizedConversation(ids, mask)


def prepare_scoring_tokenizer(tokenizer: Any) -> None:
    """Give ``tokenizer`` the training chat template (with generation markers); refuse when none can be found,
    since without markers the assistant's tokens cannot be told apart from the customer's."""
    if not ensure_generation_markers(tokenizer):
        raise ConfigError("this model's chat template cannot mark the assistant's replies, so its held-out loss "
                          "cannot be measured; compare it in an evaluation round instead.")


def assistant_token_loss(model: Any, tokenizer: Any, conversations: Sequence[Conversation], *, batch_size: int = 4,
                         max_length: int = 1024, adapter_disabled: bool = False) -> HeldoutLoss:
    """Mean NLL per assistant token of ``model`` on ``conversations`` (each ends with the reference reply).

    ``tokenizer`` must already carry the training template (:func:`prepare_scoring_tokenizer`).
    ``adapter_disabled``: score the PEFT model's base (its adapter switched off), the baseline of a fine-tune,
    without loading a second copy. Conversations with no assistant token are skipped.
    """
    # Local: the ML stack, loaded only where a model is scored (module docstring).
    import torch
    import torch.nn.functional as F

    rows = [tokenize_conversation(tokenizer, c, max_length=max_length) for c in conversations]
    rows = [r for r in rows if sum(r.assistant_mask[1:]) > 0]  # the first token has nothing before it to predict it
    if not rows:
        raise ConfigError("none of the held-out conversations has an assistant reply to score.")
    rows.sort(key=lambda r: len(r.input_ids))  # similar lengths share a batch: less padding
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_nll = 0.0
    total_tokens = 0
    switch: AbstractContextManager[Any] = model.disable_adapter() if adapter_disabled else nullcontext()
    was_training = model.training
    model.eval()
    try:
        with switch, torch.inference_mode():
            for start in range(0, len(rows), max(1, batch_size)):
                batch = rows[start : start + batch_size]
                width = max(len(r.input_ids) for r in batch)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                for row_index, row in enumerate(batch):
                    # Right padding: positions stay 0..n-1 as in training, and padded positions are masked out.
                    n = len(row.input_ids)
                    ids[row_index, :n] = torch.tensor(row.input_ids)
                    attention[row_index, :n] = 1
                    labels[row_index, :n] = torch.tensor(
                        [t if m else -100 for t, m in zip(row.input_ids, row.assistant_mask, strict=True)])
                logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits
                # Token t is predicted from the logits at t-1.
                predicted = logits[:, :-1, :].float()
                targets = labels[:, 1:].to(device)
                nll = F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), targets.reshape(-1),
                                      ignore_index=-100, reduction="sum")
                total_nll += float(nll)
                total_tokens += int((targets != -100).sum())
    finally:
        if was_training:
            model.train()
    loss = total_nll / total_tokens
    if not math.isfinite(loss):
        raise ConfigError("the held-out loss is not a finite number (the model's weights hold NaN or infinity).")
    return HeldoutLoss(loss=loss, tokens=total_tokens, conversations=len(rows))
