"""Models: loading a base model or a run (hub id or local folder), LoRA adapters, attention, input checks.

    tokenizer  tokenizers loaded from a hub id or a local folder (no torch: inspect-data and plan need only these)
    load       models loaded (safetensors, trust_remote_code off), an adapter merged
    lora       peft adapters: settings checked, added, saved, recognised
    attention  packed rows kept apart (position_ids, no attention mask, no cache)
    checks     a downloaded model folder and data file checked before anything runs

May import: data, runs.
"""
