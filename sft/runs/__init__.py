"""Runs: where a run's files live, which of its checkpoints are complete, what it was trained with, pruning.

    layout       every folder and file name the project reads or writes (runs, TensorBoard, results, assets)
    checkpoints  checkpoint-N folders: which exist, which are complete, which one a run resumes from
    manifest     run_manifest.json: config, data fingerprints, versions, commit, machine, command, status; a
                 sweep's sessions (provenance.json)
    safety       run names checked, one writer per run folder (a lock), a run moved aside while overwritten
    prune        the checkpoint pruning policy (auto_clean.py, --watch)
    callbacks    the same policy as a Trainer callback, inside a training run

May import: data.
"""
