"""`python -m sft pages provenance SOURCE`: where and how a published result was made, in one generated block: the
commit(s), the base (its path and weights SHA-256), the machine (CPU model, cores, torch threads), the date(s), the
command(s) and the wall time, total and per run, read from the files publish copies (settings.json of each
evaluation, with its runs' manifest excerpts; a sweep's provenance.json of sessions). What a result predates is
said as "not recorded", never guessed.

Per run of a sweep: training seconds (train_run_seconds, every session of a resumed run) and evaluation seconds
(settings.json's timings_s) where recorded; for sweeps made before either was kept, the median gap between
consecutive runs' finishing times (their manifests' written_at; sweeps train one pair after another), marked as
derived from timestamps.
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime
from pathlib import Path

from sft.data.errors import UserError
from sft.evaluation.sweep_tables import format_markdown
from sft.runs.layout import SWEEP_SESSIONS

NOT_RECORDED = "not recorded"


def _settings(folder: Path) -> list[dict]:
    """settings.json of an evaluation folder, or of each pair's published evaluation in a sweep folder."""
    if (folder / "settings.json").is_file():
        return [json.loads((folder / "settings.json").read_text())]
    found = sorted(folder.glob("*/*/settings.json"))
    return [json.loads(p.read_text()) for p in found]


def _runs(settings: list[dict]) -> list[dict]:
    """The manifest excerpt of every fine-tuned model evaluated (the base model has none)."""
    return [m["manifest"] for s in settings for m in s.get("models", {}).values() if m.get("manifest")]


def _short(commit: str) -> str:
    return commit[:12] + ("+dirty" if commit.endswith("+dirty") else "")


def _commits(values: list[str]) -> str:
    counts: dict[str, int] = {}
    for v in values:
        counts[v or "unknown"] = counts.get(v or "unknown", 0) + 1
    return "; ".join(f"`{_short(c)}`" + (f" ({n})" if len(counts) > 1 else "") for c, n in counts.items())


def _bases(runs: list[dict]) -> str:
    """The base each run started from: its path and the SHA-256 of its weights where the manifest records it."""
    counts: dict[str, int] = {}
    for r in runs:
        sha = r.get("base_weights_sha256")
        key = f"`{r.get('base_model') or '?'}` " + (f"`{sha[:12]}`" if sha else NOT_RECORDED)
        counts[key] = counts.get(key, 0) + 1
    return "; ".join(k + (f" ({n})" if len(counts) > 1 else "") for k, n in counts.items())


def _evaluated_base(folders: list[Path]) -> str:
    """The weights of the base an evaluation scored beside its runs (its base.json: the demo's), where it has one."""
    shas = []
    for folder in folders:
        if (folder / "base.json").is_file():
            shas.append(json.loads((folder / "base.json").read_text()).get("weights_sha256"))
    shas = [s for s in dict.fromkeys(shas) if s]
    return f"; the base evaluated beside them (base.json): {', '.join(f'`{s[:12]}`' for s in shas)}" if shas else ""


def _machine(machines: list[dict]) -> str:
    if not machines:
        return NOT_RECORDED
    seen = list(dict.fromkeys(f"{m.get('cpu', '?')}, {m.get('cpu_count', '?')} logical cores, torch threads "
                              f"{m.get('torch_threads', '?')}" for m in machines))
    return "; ".join(seen)


def _seconds(x: float) -> str:
    return f"{x:.0f} s" + (f" ({x / 60:.1f} min)" if x >= 120 else "")


def _spread(values: list[float], unit: str = "runs") -> str:
    """'median 95 s [90-101 s] over 12 runs'."""
    if len(values) == 1:
        return _seconds(values[0])
    return (f"median {_seconds(statistics.median(values))} [{min(values):.0f}-{max(values):.0f} s] over "
            f"{len(values)} {unit}")


def _timestamp(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _dates(settings: list[dict], runs: list[dict]) -> str:
    stamps = sorted(datetime.strptime(s["timestamp"], "%Y%m%d_%H%M%S") for s in settings if s.get("timestamp"))
    if not stamps:
        return NOT_RECORDED
    first, last = stamps[0].strftime("%Y-%m-%d %H:%M"), stamps[-1].strftime("%Y-%m-%d %H:%M")
    return f"evaluated {first}" + ("" if first == last else f" to {last}")


def _name(folder: Path) -> str:
    return f"`{folder.name}`" if not (folder / "settings.json").is_file() else f"`{folder.parent.name}/{folder.name}`"


def provenance_rows(*folders: str | Path) -> list[list[str]]:
    """[[field, value], ...] for one published evaluation or sweep folder, or several of one study (a sweep's
    variants) together."""
    folders = [Path(f) for f in folders]
    settings, sessions = [], []
    for folder in folders:
        found = _settings(folder)
        if not found:
            raise UserError(f"{folder}: no settings.json (an evaluation) nor */*/settings.json (a sweep's pairs): "
                             "pass a published evaluation_results/<name>/<timestamp> or evaluation_results/sweep-<name> "
                             "folder.")
        settings += found
        if (folder / SWEEP_SESSIONS).is_file():
            sessions += json.loads((folder / SWEEP_SESSIONS).read_text())["sessions"]
    runs = _runs(settings)
    sweep = not (folders[0] / "settings.json").is_file()
    rows = [["provenance", " + ".join(_name(f) for f in folders)]]
    rows.append(["runs", f"{len(runs)} fine-tuned" + (f" ({len(settings)} evaluations)" if sweep else "")])
    rows.append(["commit (training)", _commits([r.get("git_commit") for r in runs]) if runs else "-"])
    rows.append(["commit (evaluation)", _commits([s.get("git_commit") for s in settings])])
    rows.append(["date", _dates(settings, runs)])
    if runs:
        rows.append(["base (weights SHA-256)", _bases(runs) + _evaluated_base(folders)])
    machines = [s["machine"] for s in sessions if s.get("machine")] + \
               [r["machine"] for r in runs if r.get("machine")] + [s["machine"] for s in settings if s.get("machine")]
    rows.append(["machine", _machine(machines)])
    commands = list(dict.fromkeys(s["command"] for s in sessions if s.get("command"))) or \
        list(dict.fromkeys(s["command"] for s in settings if s.get("command")))
    rows.append(["command", "<br>".join(f"`{c}`" for c in commands) if commands else NOT_RECORDED])
    walls = [s["wall_seconds"] for s in sessions if s.get("wall_seconds") is not None]
    if sweep:
        interrupted = sum(1 for s in sessions if s.get("wall_seconds") is None)
        clock = _clock_seconds(sessions)
        total = (f"{_seconds(sum(walls))} over {len(walls)} session(s)" if walls else NOT_RECORDED) + \
            (f", {_seconds(clock)} of clock time (sessions ran side by side)" if walls and clock < sum(walls) - 1 else "") + \
            (f"; {interrupted} session(s) interrupted, not counted" if interrupted else "")
        rows.append(["wall time, whole sweep", total])
    train = [r.get("train_run_seconds", r.get("train_runtime")) for r in runs]
    train = [t for t in train if t is not None]
    evaluation = [sum(v for v in t.values() if isinstance(v, (int, float)))
                  for s in settings for t in (s.get("timings_s") or {}).values() if isinstance(t, dict)]
    rows.append(["wall time, training per run", _spread(train) if train else NOT_RECORDED])
    rows.append(["wall time, evaluation per model", _spread(evaluation, "models") if evaluation else NOT_RECORDED])
    if sweep and not train:
        ends = sorted(t for t in (_timestamp(r.get("written_at")) for r in runs) if t is not None)
        gaps = [(b - a).total_seconds() for a, b in zip(ends, ends[1:])]
        if gaps:
            rows.append(["wall time per run, from timestamps",
                         f"median {_seconds(statistics.median(gaps))} between consecutive runs' ends (training and "
                         f"evaluation; {len(gaps)} gaps, derived from the manifests' written_at)"])
    return rows


def _clock_seconds(sessions: list[dict]) -> float:
    """The clock time the finished sessions cover: their intervals' union (two processes on disjoint seeds overlap)."""
    spans = sorted((datetime.fromisoformat(s["finished_at"]).timestamp() - s["wall_seconds"],
                    datetime.fromisoformat(s["finished_at"]).timestamp())
                   for s in sessions if s.get("wall_seconds") is not None and s.get("finished_at"))
    total, end = 0.0, float("-inf")
    for a, b in spans:
        total += max(0.0, b - max(a, end))
        end = max(end, b)
    return total


def provenance_table(args) -> str:
    """The provenance block of a published evaluation or sweep (sft pages provenance SOURCE [--also FOLDER ...]: the
    folders of one study, e.g. a sweep's variants, in one block)."""
    return format_markdown(provenance_rows(args.source, *args.also))
