"""Held-out assistant-token loss: the batched computation equals the definition, computed by hand."""

from __future__ import annotations

import math

import pytest

from storage.errors import ConfigError
from trainers.evaluation.loss import assistant_token_loss, prepare_scoring_tokenizer, tokenize_conversation

CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I reset my password?"},
     {"role": "assistant", "content": "Settings, then Security, then Reset password."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "I was charged twice for order 1042."},
     {"role": "assistant", "content": "Sorry about that: I refunded the second charge."}],
    [{"role": "user", "content": "Do you ship to Canada?"}, {"role": "assistant", "content": "Yes, in 5 days."}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prepare_scoring_tokenizer(tokenizer)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer


def _by_hand(model, tokenizer, conversations) -> tuple[float, int]:
    """−log p(token | everything before it), one conversation at a time, summed over assistant tokens."""
    import torch

    total, count = 0.0, 0
    for conversation in conversations:
        row = tokenize_conversation(tokenizer, conversation, max_length=1024)
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([row.input_ids])).logits[0].double(), dim=-1)
        for position in range(1, len(row.input_ids)):
            if row.assistant_mask[position]:
                total -= float(log_probs[position - 1, row.input_ids[position]])
                count += 1
    return total / count, count


def test_batched_loss_with_padding_equals_the_hand_computation(tiny):
    model, tokenizer = tiny
    expected, tokens = _by_hand(model, tokenizer, CONVERSATIONS)
    for batch_size in (1, 2, 3):  # padding in a batch must change nothing
        result = assistant_token_loss(model, tokenizer, CONVERSATIONS, batch_size=batch_size)
        assert result.tokens == tokens and result.conversations == 3
        assert math.isclose(result.loss, expected, rel_tol=1e-5)


def test_only_the_assistant_replies_and_their_end_of_turn_are_scored(tiny):
    _model, tokenizer = tiny
    row = tokenize_conversation(tokenizer, CONVERSATIONS[0], max_length=1024)
    scored = tokenizer.decode([t for t, m in zip(row.input_ids, row.assistant_mask, strict=True) if m])
    assert scored == "Settings, then Security, then Reset password.<|im_end|>"


def test_the_adapter_switched_off_scores_the_base_model(tiny_model_dir, adapter_dir, tiny):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, tokenizer = tiny
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir)
    with_adapter = assistant_token_loss(tuned, tokenizer, CONVERSATIONS)
    switched_off = assistant_token_loss(tuned, tokenizer, CONVERSATIONS, adapter_disabled=True)
    assert math.isclose(switched_off.loss, assistant_token_loss(base, tokenizer, CONVERSATIONS).loss, rel_tol=1e-5)
    assert not math.isclose(with_adapter.loss, switched_off.loss, rel_tol=1e-3)  # the random adapter changes it


def test_conversations_without_a_reply_are_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(ConfigError, match="no.*assistant reply|none of the held-out"):
        assistant_token_loss(model, tokenizer, [[{"role": "user", "content": "Hello?"}]])
