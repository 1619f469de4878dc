"""A tiny Llama-shaped chat model and tokenizer, built offline in well under a second.

Used by the tests, the benchmarks and the local console when no base model is configured, so the whole
capture → train → evaluate loop runs without accounts or downloads. The weights are random: the model
learns (loss drops) but says nothing useful.

Heavy imports (tokenizers, transformers, torch) happen inside :func:`build_tiny_model`, never at import time.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# ChatML with ``{% generation %}`` markers around each assistant turn *including* its end-of-turn token,
# so ``assistant_only_loss=True`` trains the model to stop (outside the block, the end-of-turn token is never learned).
CHATML_TRAINING_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set content = message['content'] if message['content'] is string else "
    "(message['content'] | map(attribute='text') | join('') if message['content'] else '') -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- generation -%}{{ content }}{{ '<|im_end|>' }}{%- endgeneration -%}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|pad|>")
TINY_MODEL_MARKER = "ftbot-tiny-model.json"

# A small support-flavoured corpus so the byte-level BPE learns useful merges for test conversations.
_CORPUS = [
    "How do I reset my password? Go to Settings, then Security, and click Reset password.",
    "My invoice shows the wrong amount. I am sorry about that; I have refunded the difference.",
    "The app crashes when I upload a file. Please update to the latest version and try again.",
    "Can I export my data to CSV? Yes: open Reports, choose Export, and pick CSV.",
    "How do I add a teammate? Open Admin, then Members, and click Invite.",
    "Where can I find the API key? It is under Settings, Developer, API keys.",
    "Thanks for reaching out! Let me check that for you and get back within the hour.",
    "You are a helpful support assistant for Acme. Answer briefly and politely.",
    "system user assistant tool The customer asked about billing, refunds, login, shipping and orders.",
    "0123456789 order number tracking delivery address email phone account subscription plan upgrade",
]


def build_tiny_model(
    out_dir: str | Path, *, vocab_size: int = 768, hidden_size: int = 64, seed: int = 0, initializer_range: float = 0.2
) -> Path:
    """Build a tiny ``LlamaForCausalLM`` plus a byte-level BPE ChatML tokenizer in ``out_dir``; return the path.

    Deterministic for a given seed. The directory loads with ``AutoModelForCausalLM`` and
    ``AutoTokenizer`` (a Llama config: with a Qwen2 config, transformers' ``AutoTokenizer`` swaps in ``Qwen2Tokenizer`` and the ids change).
    """
    # Local: the ML stack stays out of processes that only import this module (see the module docstring).
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        model_max_length=2048,
    )
    tokenizer.chat_template = CHATML_TRAINING_TEMPLATE
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Wider than Llama's 0.02: with LoRA the embeddings and norms stay frozen, and tiny random embeddings
        # cap the logits near zero, so the loss could hardly fall below ln(vocab). 0.2 gives LoRA room to learn.
        initializer_range=initializer_range,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    (out / TINY_MODEL_MARKER).write_text(json.dumps({"built_by": "ftbot", "seed": seed}) + "\n")
    return out


def is_tiny_model(path: str | Path) -> bool:
    """True when ``path`` is a directory built by :func:`build_tiny_model`."""
    return (Path(path) / TINY_MODEL_MARKER).is_file()


_QUESTIONS = [
    ("How do I reset my password?", "Go to Settings, then Security, and click Reset password. You will get an email with a link."),
    ("My invoice shows the wrong amount.", "I am sorry about that. I have refunded the difference; it shows on your card in 3 to 5 days."),
    ("The app crashes when I upload a file.",
     "Please update to the latest version and try again. If it still crashes, send us the file name."),
    ("Can I export my data to CSV?", "Yes: open Reports, choose Export, and pick CSV."),
    ("How do I add a teammate?", "Open Admin, then Members, and click Invite. They get an email to join."),
    ("Where can I find the API key?", "It is under Settings, Developer, API keys. Keep it secret."),
    ("Where is my order?", "Your order is on its way. The tracking number is in your shipping email."),
    ("How do I upgrade my plan?", "Open Billing, choose Plans, and click Upgrade. The new plan starts today."),
]


def sample_conversations(n: int, *, seed: int = 0, min_turns: int = 1, max_turns: int = 4) -> list[dict]:
    """``n`` length-diverse support conversations as OpenAI SFT lines (deterministic for a seed).

    For tests, the console demo and the packing benchmark: 1 to ``max_turns`` question/answer turns with
    answers of varied length, so padding wastes a lot of a batch and packing has something to win.
    """
    rng = random.Random(seed)
    records = []
    for index in range(n):
        messages = [{"role": "system", "content": "You are a helpful support assistant for Acme."}]
        for _turn in range(rng.randint(min_turns, max_turns)):
            question, answer = _QUESTIONS[rng.randrange(len(_QUESTIONS))]
            messages.append({"role": "user", "content": f"{question} (ticket {index}-{rng.randint(100, 999)})"})
            messages.append({"role": "assistant", "content": " ".join([answer] * rng.randint(1, 3))})
        records.append({"messages": messages})
    return records


def sample_preference_pairs(n: int, *, seed: int = 3) -> list[dict]:
    """``n`` OpenAI DPO lines from single-turn sample conversations: the agent's reply preferred over a curt one."""
    rows = []
    for i, conversation in enumerate(sample_conversations(n, seed=seed, max_turns=1)):
        system, user, good = conversation["messages"][:3]
        rows.append({
            "input": {"messages": [system, user]},
            "preferred_output": [good],
            "non_preferred_output": [{"role": "assistant", "content": f"Not my problem, ticket {i}."}],
        })
    return rows
