"""The command line (`python -m sft ...`) and the reference check that drives its commands end to end.

    main             the parser; a command's module is imported only when that command runs (a fast --help)
    *_cmd            one module per command (inspect, train, plan, evaluate, sweep, publish, pages), imported lazily
    case_study       eval.py's command
    auto_clean       auto_clean.py's command
    reference_check  the reference experiment's commands in order on the stand-in (`make reference-check`)

May import: data, runs, models, core, evaluation, studies.
"""
