"""Synthetic alpaca-schema instruction tasks with exactly checkable answers, for the offline demo.

FAMILIES registers the 16 families (sft.studies.short_families, sft.studies.long_families); `build_demo_dataset`
draws seeded train / held-out / test splits with no instruction shared between them.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from sft.data.errors import UserError
from sft.data.io import write_jsonl
from sft.studies.facts import fact_key, held_out_facts
from sft.studies.long_families import (
    answer_count_down,
    answer_count_up,
    answer_day_list,
    answer_month_list,
    make_count_down,
    make_count_up,
    make_day_list,
    make_month_list,
)
from sft.studies.short_families import (
    answer_add,
    answer_antonym,
    answer_capital,
    answer_category,
    answer_compare,
    answer_count,
    answer_extract,
    answer_last_word,
    answer_month,
    answer_parity,
    answer_spell,
    answer_weekday,
    make_add,
    make_antonym,
    make_capital,
    make_category,
    make_compare,
    make_count,
    make_extract,
    make_last_word,
    make_month,
    make_parity,
    make_spell,
    make_weekday,
)

MAX_DRAW_FACTOR = 50  # build_demo_dataset gives up after n * this draws, so an exhausted family fails loudly


@dataclass(frozen=True)
class Family:
    """One task family: a row generator and an independent answer checker."""

    name: str
    uses_input: bool
    make: Callable[[random.Random], tuple[str, str, str]]
    answer: Callable[[str, str], str]
    long_output: bool = False  # answers of many tokens (3-15 items); the evaluation reports these families apart


# ---------------------------------------------------------------- registry


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("add", False, make_add, answer_add),
        Family("count", True, make_count, answer_count),
        Family("extract", True, make_extract, answer_extract),
        Family("compare", False, make_compare, answer_compare),
        Family("spell", False, make_spell, answer_spell),
        Family("last_word", True, make_last_word, answer_last_word),
        Family("antonym", False, make_antonym, answer_antonym),
        Family("capital", False, make_capital, answer_capital),
        Family("weekday", False, make_weekday, answer_weekday),
        Family("month", False, make_month, answer_month),
        Family("category", True, make_category, answer_category),
        Family("parity", False, make_parity, answer_parity),
        Family("count_up", False, make_count_up, answer_count_up, long_output=True),
        Family("count_down", False, make_count_down, answer_count_down, long_output=True),
        Family("day_list", False, make_day_list, answer_day_list, long_output=True),
        Family("month_list", False, make_month_list, answer_month_list, long_output=True),
    )
}  # every task family, in the fixed order rows cycle through: 12 with 1-5 token answers, 4 with long outputs


def resolve_names(requested: Sequence[str] | None, known: Sequence[str], what: str = "families") -> list[str]:
    """Return the requested names in order, defaulting to all of `known`, rejecting unknown names."""
    if requested is None:
        return list(known)
    names = list(requested)
    if not names:
        raise UserError(f"{what} is empty; pass None for all or some of {list(known)}")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UserError(f"unknown {what} {unknown}; choose from {list(known)}")
    return names


def resolve_families(families: Sequence[str] | None) -> list[str]:
    """Return the requested family names in order, defaulting to all, rejecting unknown names."""
    return resolve_names(families, list(FAMILIES))


def check_split_sizes(**counts: int) -> None:
    """A ValueError naming the first negative split size (n_train=..., n_heldout=..., n_test=...)."""
    for name, count in counts.items():
        if count < 0:
            raise UserError(f"{name} must be >= 0, got {count}")


def make_row(family: str, rng: random.Random) -> dict:
    """Draw one row of a family as an alpaca-schema dict with its family name."""
    instruction, input, output = FAMILIES[family].make(rng)
    return {"instruction": instruction, "input": input, "output": output, "family": family}


def generate_rows(n: int, seed: int, families: Sequence[str] | None = None) -> list[dict]:
    """Generate n rows cycling over families, deterministic in seed."""
    if n < 0:
        raise UserError(f"n must be >= 0, got {n}")
    names = resolve_families(families)
    rng = random.Random(seed)
    return [make_row(names[i % len(names)], rng) for i in range(n)]


# ---------------------------------------------------------------- dataset files


def derive_seed(seed: int, split: str) -> int:
    """Derive a per-split seed so splits never share a random stream, even across base seeds."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{split}".encode()).digest()[:8], "big")


def fill_split(n: int, seed: int, families: list[str], seen: set[tuple[str, str]], accept=None, draw=None) -> list[dict]:
    """Draw n rows balanced over families, skipping (instruction, input) pairs in seen and rows accept(row) refuses
    (a fact held out, or not), and add the new ones to seen. draw(family, rng): a row (default make_row)."""
    # Per-family quotas keep the split balanced even when dedup rejects more draws of one family.
    quotas = [n // len(families) + (1 if i < n % len(families) else 0) for i in range(len(families))]
    rng = random.Random(seed)
    rows: list[dict] = []
    draws = 0
    while len(rows) < n:
        for i, family in enumerate(families):
            if quotas[i] == 0:
                continue
            draws += 1
            if draws > MAX_DRAW_FACTOR * max(n, 1):
                raise UserError(
                    f"could not draw {n} unique rows (family {family!r} looks exhausted); lower the split sizes"
                )
            row = (draw or make_row)(family, rng)
            key = (row["instruction"], row["input"])
            if key in seen or (accept is not None and not accept(row)):
                continue
            seen.add(key)
            rows.append(row)
            quotas[i] -= 1
    return rows


HELD_FACT_SHARE = 0.2  # of each family's facts, the share fine-tuning never shows (held-out and test ask about them)
UNSEEN, SEEN = "unseen", "seen"  # test rows' `facts`: a fact no training row holds; a training row's fact reworded


def build_demo_dataset(
    out_dir: str | Path, n_train: int, n_heldout: int, n_test: int, seed: int = 0, n_test_seen: int = 0,
    by_fact: bool = True,
) -> dict[str, Path]:
    """Write train/heldout/test JSONL splits, disjoint on (instruction, input), plus manifest.json.

    Split by fact (sft.studies.facts): held-out rows and the test rows marked facts=unseen ask about facts no
    training row holds; the n_test_seen test rows marked facts=seen ask about a training row's fact in a phrasing
    no training row has (the families whose fact is the input reuse a training row's input under a new instruction).
    by_fact=False: the earlier split, disjoint on (instruction, input) only (no test row marked, n_test_seen unused).
    """
    check_split_sizes(n_train=n_train, n_heldout=n_heldout, n_test=n_test, n_test_seen=n_test_seen)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    families = list(FAMILIES)
    held = {f: held_out_facts(f, make_row, HELD_FACT_SHARE, seed) if by_fact else (lambda key: False)
            for f in families}
    is_held = lambda row: held[row["family"]](fact_key(row))  # noqa: E731
    n_test_seen = n_test_seen if by_fact else 0
    seen: set[tuple[str, str]] = set()
    splits = {"train": fill_split(n_train, derive_seed(seed, "train"), families, seen,
                                  (lambda r: not is_held(r)) if by_fact else None)}
    trained = {fact_key(r) for r in splits["train"]}
    by_family = {f: [r for r in splits["train"] if r["family"] == f] for f in families}

    def reword(family: str, rng: random.Random) -> dict:
        """A fresh row; for a family whose fact is its input, given a training row's input and answer."""
        row = make_row(family, rng)
        if FAMILIES[family].uses_input and by_family[family]:
            old = rng.choice(by_family[family])
            row = {**row, "input": old["input"], "output": old["output"]}
        return row

    splits["heldout"] = fill_split(n_heldout, derive_seed(seed, "heldout"), families, seen, is_held if by_fact else None)
    test = fill_split(n_test, derive_seed(seed, "test"), families, seen, is_held if by_fact else None)
    test_seen = fill_split(n_test_seen, derive_seed(seed, "test-seen"), families, seen,
                           lambda r: fact_key(r) in trained, draw=reword)
    # Test rows carry the gold answer under its own key so evaluation never reads `output` by accident.
    marks = ({"facts": UNSEEN}, {"facts": SEEN}) if by_fact else ({}, {})
    splits["test"] = ([{**row, "answer": row["output"], **marks[0]} for row in test]
                      + [{**row, "answer": row["output"], **marks[1]} for row in test_seen])
    keys = {name: {fact_key(r) for r in rows} for name, rows in splits.items()}
    paths = {name: out / f"{name}.jsonl" for name in splits}
    for name, rows in splits.items():
        write_jsonl(paths[name], rows)
    manifest = {
        "description": "Synthetic alpaca-schema instruction tasks with exact answers (sft.studies.synthetic); "
        "splits are disjoint on (instruction, input).",
        "seed": seed,
        "counts": {name: len(rows) for name, rows in splits.items()},
        "split_by_fact": by_fact,
        "test_seen": n_test_seen,  # of the test rows, those about a trained fact (the last ones)
        "families": families,
        "family_counts": {
            name: {f: sum(r["family"] == f for r in rows) for f in families} for name, rows in splits.items()
        },
        "files": {name: path.name for name, path in paths.items()},
        "facts": None if not by_fact else {
            "key": "sft.studies.facts.fact_key: the family and its input/answer pair, phrasing removed",
            "held_share": HELD_FACT_SHARE,
            "distinct": {name: len(k) for name, k in keys.items()},
            # 0 by construction (and by test): no held-out or unseen-fact test row asks about a trained fact
            "train_overlap": {"heldout": len(keys["train"] & keys["heldout"]),
                              "test_unseen": len(keys["train"] & {fact_key(r) for r in test}),
                              "test_seen": len(keys["train"] & {fact_key(r) for r in test_seen})},
            "test_counts": {UNSEEN: len(test), SEEN: len(test_seen)},
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return paths
