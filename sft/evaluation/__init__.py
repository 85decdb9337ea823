"""Evaluation: held-out losses, lm-eval tasks, generation, results, reports and case studies of trained models.

    settings    what `sft evaluate` runs (EvalConfig), decoding (GenerationSettings), `sft pages`' tables: the
                defaults the command line's flags are built from, without torch or lm-eval
    heldout     response loss, perplexity and token accuracy on the held-out split (per role for conversations)
    inputs      the models given to an evaluation: labels, paths, what each one is
    tasks       lm-eval task managers, lm-eval's tasks on local data, request costs; GeneratedTasks, the form
                in which a study hands in its own tasks (evaluation knows no study)
    evaluate    the driver: every model through held-out metrics and lm-eval, raw and in its chat template
    costs       what an evaluation will cost (`--dry-run`)
    results     lm-eval's results to OpenCompass-style summary rows
    raw_generations  lm-eval's HF model recording each generation's raw tokens (before stop-string cuts, filters)
    side_effects     stop failure, overshoot (past a list's end), run-on, prompt echo and generated length of every
                     generation, as summary rows
    seeds       Student-t intervals and paired t-tests over seeds; between-seed spread of a paired difference,
                minimum detectable difference, seeds a difference needs
    multiplicity  Holm's adjustment; the primary endpoints a sweep declares before its results
    combined    the interval of a sweep's difference that resamples seeds and test items together (item_scores.csv)
    report      summary tables and paired bootstrap intervals
    compare     results read back, plotted, tabulated (Comparison.png, Dataset_results.xlsx)
    publish     what the pages cite, copied from the git-ignored evaluation_results/raw/ into evaluation_results/
    item_tests  paired tests over items (exact McNemar, paired t) Holm-adjusted over a page table's differences
    pages       the result tables of README.md and docs/*.md, written from the published results (`sft pages`)
    sweep_tables  a sweep's tables for the pages (intervals over seeds, variants, seeds needed, primary endpoints)
    bases       the same endpoints of sweeps on different bases side by side, with Holm's p and a plot
    provenance  where and how a published result was made: commit, machine, date, command, wall times (`sft pages
                provenance`)
    plots       training and comparison plots
    generate    batched decoding with left padding (notebooks, case studies)
    case_study  eval.py's side-by-side: the same prompts through several models
    case_cells  how a case study shows prompts, replies, tool calls and outputs in markdown cells

May import: data, runs, models, core.
"""
