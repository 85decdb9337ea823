"""The experiment's core path: settings -> templates -> tokens with roles -> batches -> weighted loss -> Trainer.

    config        the config dataclasses (model, train, demo, lora) and the presets by name
    overrides     a notebook's overrides and the command line's flags into config fields; load_config
    prompts       the prompt templates (Alpaca first) and their chat-template form
    chat          conversations rendered through a chat template, every token with its role and turn;
                  the end-of-turn rule that training saves and generation obeys
    tokenize      rows -> input_ids, a role, turn and message weight per token (prompt and response tokenized
                  apart; EOS appended); no loss weight: one cache serves every weight setting
    controls      the weight controls that act on tokens and text: reply-closing and empty-reasoning marks, earlier
                  reasoning dropped, a message's character spans to tokens
    weights       roles -> loss weights under the run's WeightSpec, for the reports and at every step
    prepare       load + split + tokenize, cached: the data a run trains and evaluates on (a mixture: by source)
    collate       batches: padded, or packed into one row with position_ids
    loss          the weighted loss: its definition (weighted_cross_entropy), then the selective LM head that
                  computes it without the full logits (cross-entropy only where the weight is non-zero, in chunks)
    trainer       the Trainer with the weighted loss: the step's normaliser, response/prompt/role/source logs, run totals
    run_folder    what a run does with its folder: resume or refuse, settings compared, overwrite, the lock
    values        checks of setting values (batch sizes, rates, cadences) and a notebook's overrides read
    train         a run built from its config (arguments, model, data, Trainer) and carried out
    costs, plan   what a run will cost in time and memory before it starts (`sft plan`)
    inspect_data  what training will see: counts, lengths, one example with its weights

May import: data, runs, models.
"""
