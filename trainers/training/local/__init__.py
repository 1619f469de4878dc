"""On-prem training (QLoRA / LoRA SFT and DPO with TRL), run in the worker process.

Importing this package is cheap; the heavy stack (torch, transformers, peft, trl, bitsandbytes, datasets) is
imported only inside the functions that train, which run in ``python -m trainers.training.worker``, never in the bot.
"""
