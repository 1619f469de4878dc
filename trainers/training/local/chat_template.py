"""Assistant-only loss needs ``{% generation %}`` markers in the tokenizer's chat template (TRL's ``SFTConfig.assistant_only_loss``)."""

from __future__ import annotations

import logging

from trainers.tiny_model import CHATML_TRAINING_TEMPLATE

log = logging.getLogger(__name__)


def ensure_generation_markers(tokenizer) -> bool:
    """Give ``tokenizer`` a training chat template with generation markers; False if none can be found.

    Order: the template already has markers → keep it; TRL knows the family (Llama 3, Qwen 2.5/3, Gemma, Phi-3…)
    → TRL's patched template; a ChatML vocabulary (``<|im_start|>``/``<|im_end|>``) → ftbot's ChatML training
    template, which keeps ``<|im_end|>`` inside the marked span so the model learns to stop. Otherwise the caller
    trains on the whole sequence and says so in the log.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers  # Local: heavy (TRL).

    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if template and has_generation_markers(template):
        return True
    if template:
        try:
            patched = get_training_chat_template(tokenizer)
        except ValueError:
            patched = None
        if patched:
            tokenizer.chat_template = patched
            log.info("chat template patched by TRL with {%% generation %%} markers")
            return True
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        tokenizer.chat_template = CHATML_TRAINING_TEMPLATE
        log.info("chat template replaced by ftbot's ChatML training template (with {%% generation %%} markers)")
        return True
    log.warning(
        "the base model's chat template has no {%% generation %%} markers and ftbot cannot add them: "
        "training on the whole conversation instead of the assistant's replies only"
    )
    return False
