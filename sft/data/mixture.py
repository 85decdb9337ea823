"""Mixtures: several data sources with a sampling ratio each (`--data a.jsonl:0.7,b.jsonl:0.3`, or a YAML list), read
and checked here; the draw (how many training examples each source gives) is `draw_counts` and `draw_indices`.

The ratio is a share of **training examples**: of the examples a run trains on per epoch, source i gives
round(share_i * N), N being the sum of the sources' own training examples (after the held-out split and
tokenization; a source of ratio 0 counts none), shares the ratios divided by their sum (they need not sum to 1). A source with fewer examples
than its share is repeated (every example the same number of times, a seeded choice of them once more); one with
more gives a seeded choice of them; both are counted and printed, never silent. The draw is a function of the
data, the ratios and split_seed: the same examples in every regime of a comparison, and in every epoch (the Trainer
reshuffles their order).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sft.data.errors import UserError
from sft.data.weights import nonnegative, parse_role_weights

SOURCE = "source"  # the example column that says which source of a mixture an example came from (its index)
YAML_SUFFIXES = (".yaml", ".yml")  # a --data file with one of these suffixes is a mixture's list of sources
ENTRY_KEYS = ("path", "ratio", "role_weights", "name")  # what a YAML entry may give (path required)
FORMS = ("--data a.jsonl:0.7,b.jsonl:0.3, or --data mix.yaml holding a list of {path, ratio, role_weights, name}")


@dataclass
class Source:
    """One source of a mixture: its data (a file, folder or hub id), its ratio, its own role weights and its name."""

    path: str
    ratio: float
    role_weights: dict[str, float] = field(default_factory=dict)  # overrides the run's role weights for its rows
    name: str = ""  # in the logs (train/source_<name>_loss) and in inspect-data's export; default: the file's stem


def is_mixture(data: str) -> bool:
    """Whether `data` names a mixture: a YAML file, or PATH:RATIO entries (a path that exists as given is a source
    of its own, whatever ':' or ',' it holds)."""
    text = str(data)
    if Path(text).suffix.lower() in YAML_SUFFIXES:
        return True
    if Path(text).exists():
        return False
    heads = (part.rpartition(":")[0] for part in text.split(","))
    return any(_ratio_text(part) is not None for part in text.split(",")) or any(h and Path(h).exists() for h in heads)


def _ratio_text(part: str) -> str | None:
    """The RATIO of a PATH:RATIO entry when its text after the last ':' reads as a number, else None."""
    _, sep, tail = part.rpartition(":")
    try:
        float(tail)
    except ValueError:
        return None
    return tail if sep else None


def parse_mixture(data: str) -> list[Source]:
    """The sources of a mixture given as `a.jsonl:0.7,b.jsonl:0.3` or as a YAML file; a bad entry (no ratio, a ratio
    that is not a number >= 0, ratios summing to 0, an unknown key, a missing file) is a UserError naming the
    source, the field and the fix."""
    text = str(data)
    if Path(text).suffix.lower() in YAML_SUFFIXES:
        sources = _yaml_sources(Path(text))
    else:
        sources = []
        for k, part in enumerate(p.strip() for p in text.split(",")):
            where = f"--data entry {k + 1} ({part!r})"
            head, sep, tail = part.rpartition(":")
            if not sep or Path(part).exists():
                fix = "it exists, so give it a ratio: " if Path(part).exists() else "write it as "
                raise UserError(f"{where}: no ratio. A mixture gives every source a ratio, {fix}{part or 'PATH'}:0.5 "
                                f"({FORMS}; the ratio follows the last ':' of the entry, so a path holding ':' "
                                "such as C:/data/a.jsonl still works: C:/data/a.jsonl:0.5).")
            sources.append(Source(path=head, ratio=_check_ratio(tail, where)))
    for k, s in enumerate(sources):
        if not Path(s.path).exists() and not _looks_hub(s.path):
            raise UserError(f"source {k + 1} of the mixture, field path: {s.path} is no such file or folder. Fix the "
                            "path (relative paths are read from the directory you run in), or drop the source.")
    if not sources:
        raise UserError(f"{text}: the mixture names no source; {FORMS}.")
    total = sum(s.ratio for s in sources)
    if total <= 0:
        raise UserError(f"{text}: the ratios sum to 0, so no source would give an example. Give at least one source "
                        "a ratio above 0 (a ratio of 0 keeps a source's held-out rows in the evaluation only).")
    _name_sources(sources)
    return sources


def _looks_hub(path: str) -> bool:
    """A hub dataset id (owner/name), which sft.data.rows loads from the hub rather than from disk."""
    return "/" in path and not path.startswith((".", "/")) and not Path(path).suffix


def _check_ratio(value, where: str) -> float:
    """A ratio as a float >= 0, or a UserError naming where it was given."""
    x = nonnegative(value)
    if x is None:
        raise UserError(f"{where}, field ratio: must be a number >= 0, got {value!r}. Give each source its share "
                        "of the training examples, e.g. 0.7 and 0.3 (they are divided by their sum, so 7 and 3 "
                        "give the same mixture).")
    return x


def _yaml_sources(path: Path) -> list[Source]:
    """The sources of a YAML mixture file: a list (or {sources: [...]}) of {path, ratio, role_weights, name};
    a relative path is read from the YAML file's folder."""
    import yaml  # only for a YAML mixture: keeps `sft --help` from importing it

    if not path.is_file():
        raise UserError(f"{path}: no such mixture file. Write a YAML list of sources, e.g.\n"
                        "- {path: a.jsonl, ratio: 0.7}\n- {path: b.jsonl, ratio: 0.3, role_weights: {user: 0.5}}")
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable YAML file ({str(e)[:200]}). Fix it; {FORMS}.") from None
    if isinstance(entries, dict) and set(entries) == {"sources"}:
        entries = entries["sources"]
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: must hold a list of sources, got {type(entries).__name__}; e.g.\n"
                        "- {path: a.jsonl, ratio: 0.7}\n- {path: b.jsonl, ratio: 0.3}")
    sources = []
    for k, entry in enumerate(entries, 1):
        where = f"{path}: source {k}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: is a {type(entry).__name__}, not a mapping; write {{path: a.jsonl, ratio: 0.7}}.")
        unknown = [key for key in entry if key not in ENTRY_KEYS]
        if unknown:
            raise UserError(f"{where}, field {unknown[0]}: unknown; a source gives {', '.join(ENTRY_KEYS)} "
                            "(path required, ratio default 1).")
        if not isinstance(entry.get("path"), str) or not entry["path"].strip():
            raise UserError(f"{where}, field path: is missing or not text; give the source's file, folder or hub id.")
        p = entry["path"].strip()
        if not Path(p).is_absolute() and not (_looks_hub(p) and not (path.parent / p).exists()):
            p = str(path.parent / p)  # a relative path is the YAML file's neighbour, wherever the run starts
        try:
            weights = parse_role_weights(entry.get("role_weights"))
        except UserError as e:
            raise UserError(f"{where}, field role_weights: {e}") from None
        name = entry.get("name")
        if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name)):
            raise UserError(f"{where}, field name: {name!r} must be letters, digits, '_', '.' or '-' (it names "
                            "the source's metrics, e.g. train/source_<name>_loss).")
        sources.append(Source(path=p, ratio=_check_ratio(entry.get("ratio", 1.0), where), role_weights=weights,
                              name=name or ""))
    return sources


def _name_sources(sources: list[Source]) -> None:
    """Give every source a name (the file's stem, characters outside [A-Za-z0-9_.-] as '_'); names given twice
    get their entry's number (train_1, train_2), and a name given twice in the YAML is an error."""
    given = [s.name for s in sources if s.name]
    twice = next((n for n in given if given.count(n) > 1), None)
    if twice:
        raise UserError(f"two sources are named {twice!r}: give each source its own name (it names its metrics).")
    for s in sources:
        if not s.name:
            s.name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(s.path.rstrip("/\\")).stem) or "source"
    names = [s.name for s in sources]
    for k, s in enumerate(sources):
        if names.count(s.name) > 1:
            s.name = f"{s.name}_{k + 1}"


def shares(sources: list[Source]) -> list[float]:
    """Each source's share of the training examples: its ratio over the ratios' sum."""
    total = sum(s.ratio for s in sources)
    return [s.ratio / total for s in sources]


def draw_counts(available: list[int], share: list[float]) -> list[int]:
    """Training examples drawn from each source: share_i of N, the training examples of the sources of a share above 0
    (a source of ratio 0 adds none), rounded by the largest remainder so that they sum to N exactly."""
    total = sum(n for n, p in zip(available, share) if p > 0)
    exact = [p * total for p in share]
    counts = [math.floor(x) for x in exact]
    for k in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[: total - sum(counts)]:
        counts[k] += 1
    return counts


def draw_indices(n: int, k: int, seed: int, source: int) -> np.ndarray:
    """k example indices of a source of n (sorted): each of the n k // n times, and a seeded choice of k % n of them
    (without replacement) once more; the seed is (split_seed, the source's number)."""
    if n == 0 or k == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, source])
    extra = rng.choice(n, size=k % n, replace=False)
    return np.sort(np.concatenate([np.repeat(np.arange(n), k // n), extra])).astype(np.int64)


def describe_draw(name: str, available: int, drawn: int, share: float) -> str:
    """One console line per source: its share, the examples it has and how many were drawn, repeats counted."""
    line = f"mixture {name}: share {share:.4f}, {available:,} training examples -> {drawn:,} drawn"
    if available and drawn > available:
        times, extra = divmod(drawn, available)
        return line + (f" (fewer than its share: repeated, every example {times}x"
                       + (f" and {extra:,} of them once more)" if extra else ")"))
    if drawn < available:
        return line + f" ({available - drawn:,} not drawn: a seeded choice of {drawn:,})"
    return line
