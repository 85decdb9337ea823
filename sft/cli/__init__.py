"""The command line (`python -m sft ...`) and the reference check that drives its commands end to end.

    main             the parser; a command's module is imported only when that command runs (a fast --help)
    reference_check  the reference experiment's commands in order on the stand-in (`make reference-check`)

May import: data, runs, models, core, evaluation, studies.
"""
