"""The fact each demo row asks about (a family's input/answer pair: the two numbers of a sum, a country, a list's
endpoints), as a normalised key, and the seeded choice of the facts fine-tuning never shows (held-out and test ask
about those; the pretraining corpus states them all)."""

from __future__ import annotations

import functools
import hashlib
import json
import random
from typing import Callable

from sft.studies.short_families import CAPITALS, MONTHS, WEEKDAYS, COMPARE_SMALLER_KEYS
from sft.studies.vocab import find_ints, find_key, find_quoted, has_any

# family -> (instruction, input, output) -> the fact, independent of the phrasing (template, decoration)
FACT_OF: dict[str, Callable[[str, str, str], object]] = {
    "add": lambda i, x, o: sorted(find_ints(i)),  # 3 + 4 and 4 + 3: one fact
    "count": lambda i, x, o: x.split(),
    "extract": lambda i, x, o: x.split(),
    "compare": lambda i, x, o: [sorted(find_ints(i)), "smaller" if has_any(i, COMPARE_SMALLER_KEYS) else "larger"],
    "spell": lambda i, x, o: find_ints(i),
    "last_word": lambda i, x, o: x.split(),
    "antonym": lambda i, x, o: find_quoted(i),
    "capital": lambda i, x, o: find_key(i, CAPITALS),
    "weekday": lambda i, x, o: [find_key(i, WEEKDAYS), o],
    "month": lambda i, x, o: [find_ints(i) or find_key(i, MONTHS), o],
    "category": lambda i, x, o: x.strip(),
    "parity": lambda i, x, o: find_ints(i),
    "count_up": lambda i, x, o: o,  # a list is its endpoints: the answer names them
    "count_down": lambda i, x, o: o,
    "day_list": lambda i, x, o: o,
    "month_list": lambda i, x, o: o,
}
DOMAIN_DRAWS = 20_000  # draws that enumerate a family's facts; more distinct facts than ENUMERABLE: hashed instead
ENUMERABLE = 2_000  # a family with fewer facts gets an exact share held out; the sentence families are hashed


def fact_key(row: dict) -> str:
    """The normalised fact of a demo row: family and its fact as compact JSON, e.g. 'capital:"Peru"'."""
    fact = FACT_OF[row["family"]](row["instruction"], row.get("input") or "", row["output"])
    return f"{row['family']}:{json.dumps(fact, separators=(',', ':'))}"


@functools.cache
def _domain(family: str, make_row) -> tuple[str, ...]:
    """The fact keys of a family met in DOMAIN_DRAWS seeded draws, sorted (every one, for an enumerable family)."""
    rng = random.Random(f"domain:{family}")
    return tuple(sorted({fact_key(make_row(family, rng)) for _ in range(DOMAIN_DRAWS)}))


def held_out_facts(family: str, make_row, share: float, seed: int) -> Callable[[str], bool]:
    """Whether a fact key of `family` is held out of fine-tuning: an exact `share` (at least one) of an enumerable
    family's facts, chosen with `seed`; of a family with too many facts to enumerate (a sentence), a hash share."""
    domain = list(_domain(family, make_row))
    if len(domain) < ENUMERABLE:
        random.Random(f"{seed}:{family}").shuffle(domain)
        held = set(domain[:max(1, round(share * len(domain)))])
        return held.__contains__
    cut = int(share * 2**32)
    return lambda key: int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "big") < cut
