"""Data: instruction rows and conversations read, validated, split and counted; nothing here tokenizes.

    config         DataConfig: where the rows come from and how they become token sequences (the `data` section)
    rows           files, folders and hub ids read; columns mapped; every row validated (file, row, field, fix)
    conversations  chat rows validated (OpenAI messages, ShareGPT), their tools; the role codes every token is tagged with
    messages       one turn read: text or text parts, tool calls (OpenAI, ShareGPT function_call), tool outputs, reasoning
    files          which files of a folder are data (the suffixes read; a user's Dataset/ folder)
    readers        one file read into records (JSON, JSON Lines, CSV, Parquet), bad bytes and lines named
    splits         the seeded held-out split, a function of (data, seed) only
    mixture        a mixture's sources (PATH:RATIO entries or a YAML list) checked; its draw of training examples
    weights        WeightSpec: how the roles of tokens become loss weights (w, role weights, train_on, schedule,
                   normaliser); per-token weights from roles and the data's message weights
    stats          token statistics of tokenized data (lengths, generation ratio, tokens by role)
    io             the one JSON Lines writer
    errors         UserError: bad input the user can fix, which the command line prints as one paragraph (exit 2)

May import: nothing of sft (the bottom wing).
"""
