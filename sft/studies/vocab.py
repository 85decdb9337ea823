"""The demo families' building blocks: word lists, number spelling, answer parsing and prompt decoration."""

from __future__ import annotations

import random
import re
from typing import Iterable, Sequence

from sft.data.errors import UserError

# A fixed vocabulary keeps the corpus small enough for a tiny model and a ~1k BPE vocab to cover.
WORDS: tuple[str, ...] = tuple(
    """
    apple baby bag ball bank bed bell bird boat body book bottle box boy bread bridge brother
    butter cake car card cat chair cheese child city clock cloud coat coffee cook corn cow cup
    day desk dog door dream drum duck earth egg eye face farm father field fire fish flag floor
    flower food foot forest friend frog game garden girl glass gold grass green hand hat head
    heart hill home horse house ice island jacket juice key king kite lake lamp leaf letter light
    lion map milk moon morning mother mountain mouse music name nest night nose ocean orange
    paper park pen pencil people pig plane plant queen rain river road rock room rose salt sand
    school sea seed sheep ship shoe shop sister sky snow song spoon star stone street sugar sun
    table tea teacher tiger time tree train truck water wind window winter wolf wood world
    big blue bright cold dark deep early easy fast gentle happy hot kind large late little long
    loud new old quiet quick red round sad short slow small soft strong sweet tall warm white
    wild young ask bring build buy carry catch climb draw drink eat find fly give grow help
    jump keep laugh learn move open paint play read run see sing sit sleep swim talk walk
    wash watch write
    """.split()
)  # ~200 common lowercase English words; every word in the data comes from here or NAMES

NAMES: tuple[str, ...] = (
    "Anna", "Ben", "Clara", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack",
    "Kate", "Leo", "Maria", "Nick", "Olga", "Paul", "Rosa", "Sam", "Tom", "Vera",
)  # capitalised names for the `extract` family; WORDS is all lowercase so names are unambiguous

ONES: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # English words for 0..19
TENS: tuple[str, ...] = (
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
)  # English words for the tens digit, indexed by digit (0 and 1 are handled by ONES)


# ---------------------------------------------------------------- helpers


def spell_number(n: int) -> str:
    """Spell 0..9999 in English words, e.g. 347 -> 'three hundred forty-seven'."""
    if not 0 <= n <= 9999:
        raise UserError(f"spell_number supports 0..9999, got {n}; pass a smaller number")
    if n < 20:
        return ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return TENS[tens] + (f"-{ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{ONES[hundreds]} hundred" + (f" {spell_number(rest)}" if rest else "")
    thousands, rest = divmod(n, 1000)
    return f"{ONES[thousands]} thousand" + (f" {spell_number(rest)}" if rest else "")


def find_ints(text: str) -> list[int]:
    """Return every integer written with digits in text, in order."""
    return [int(m) for m in re.findall(r"\d+", text)]


def find_quoted(text: str) -> str:
    """Return the single-quoted target in an instruction, e.g. "the letter 'e'" -> 'e'."""
    match = re.search(r"'([^']+)'", text)
    if match is None:
        raise UserError(f"no quoted target in instruction {text!r}; quote the letter or word like 'e'")
    return match.group(1)


def draw_sentence(rng: random.Random, lo: int, hi: int) -> list[str]:
    """Draw a lowercase word-soup sentence of lo..hi words from WORDS."""
    return [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]


def join_items(items: Iterable[object]) -> str:
    """Join list items the way inputs and outputs write lists: comma plus space."""
    return ", ".join(str(item) for item in items)


def has_any(text: str, keys: Sequence[str]) -> bool:
    """Return True when any key occurs in text, case-insensitively."""
    low = text.lower()
    return any(key in low for key in keys)


DECOR_PREFIXES: tuple[str, ...] = ("", "", "Please answer: ", "Question: ", "Quick task: ", "Here is a task. ", "Try this: ")
DECOR_SUFFIXES: tuple[str, ...] = ("", "", " Be brief.", " Reply with just the answer.", " Keep it short.", " Thanks!", " Answer directly.")
# Optional wording around an instruction: small-domain families need more unique (instruction, input) pairs than
# templates x domain gives, so held-out/test splits can stay disjoint from train. No digits, quotes or parser keywords.


def decorate(rng: random.Random, text: str) -> str:
    """Wrap an instruction in an optional neutral prefix and suffix."""
    return rng.choice(DECOR_PREFIXES) + text + rng.choice(DECOR_SUFFIXES)


def find_key(text: str, keys: Iterable[str]) -> str:
    """Return the longest key that occurs in text as a whole word (case-sensitive)."""
    found = [k for k in keys if re.search(rf"(?<![A-Za-z]){re.escape(k)}(?![A-Za-z])", text)]
    if not found:
        raise ValueError(f"none of the expected names occurs in {text!r}")
    return max(found, key=len)
