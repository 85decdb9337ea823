"""The experiment's core path: settings -> templates -> tokens with roles -> batches -> weighted loss -> Trainer.

    values        checks of setting values (batch size, rates, cadences) and a notebook's overrides read
    run_folder    what a run does with its folder: resume or refuse, settings compared, overwrite, the lock
    config        the config dataclasses (model, train, demo, lora) and the presets by name; overrides
    prompts       the prompt templates (Alpaca first) and their chat-template form
    chat          conversations rendered through a chat template, every token with its role and turn;
                  the end-of-turn rule that training saves and generation obeys
    tokenize      rows -> input_ids, labels, loss weights (prompt and response tokenized apart; EOS appended)
    prepare       load + split + tokenize, cached: the data a run trains and evaluates on
    collate       batches: padded, or packed into one row with position_ids
    loss          the selective LM head: cross-entropy only where the weight is non-zero, in chunks
    train         the Trainer with the weighted loss, its logs, resuming, the final save
    costs, plan   what a run will cost in time and memory before it starts (`sft plan`)
    inspect_data  what training will see: counts, lengths, one example with its weights

May import: data, runs, models.
"""
