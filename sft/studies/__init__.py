"""Studies built from training and evaluation: the offline demo, its data and base model, sweeps, the reference check.

    demo                the offline demo end to end (`make demo`, `make demo-chat`), its assets, eval.py's prompts
    synthetic           the demo's 16 task families with exact answers, drawn into seeded splits
    vocab, short_families, long_families
                        the families' words and makers (short 1-2 token answers; lists of 3-15 items)
    dialogues           the conversational demo's synthetic dialogues
    tools               its synthetic tool-use conversations (a call, the tool's reply, the answer from it)
    tiny_model          the demo's base: a byte-level BPE and a randomly initialised Qwen2 built offline
    corpus              the pretraining corpus: every family's facts as plain statements, no template
    prose               the corpus's everyday sentences: the prompts' words in other sentences, never their own
    facts               the fact each demo row asks about, and the seeded facts fine-tuning never shows
    pretrain            the demo's pretrained base: the tiny init trained on the corpus (sft.core.train)
    tasks               the demo's and the dialogues' lm-eval tasks (handed to evaluation as GeneratedTasks)
    dialogue_task       DialogueTask: an lm-eval task whose documents are conversations sent as chat turns
    tool_tasks          the tool-use conversations' tasks: the call (parsed, exact match) and the final answer;
                        ToolTask, a DialogueTask with tools
    sweep               prompt-loss weights x seeds, trained and evaluated, with intervals over seeds, p-values,
                        Holm and the declared primary endpoints
    sweep_plot          the sweep's plot: scores and held-out loss against w, with 95% bands over seeds
    variants            the sweep's other axes (role weights, schedules, normalisers, learning rates), compared
                        paired by seed
    reference           the reference experiment's stand-in: a tiny Qwen2.5 and local benchmark rows

May import: data, runs, models, core, evaluation.
"""
