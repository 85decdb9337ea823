"""The demo's 4 long-output families (lists of 3-15 items: counting up or down, spans of days or months)."""

from __future__ import annotations

import random
import re
from typing import Sequence

from sft.studies.short_families import MONTHS, WEEKDAYS
from sft.studies.vocab import decorate, find_ints, join_items

# ---------------------------------------------------------------- long outputs: sequences
# The long-output families answer with 3-15 items (10-36 tokens per family on average) from a short prompt: a range to count
# or a span of days or months. Each next item follows from the one before (a successor table the tiny
# model learns in minutes) and the prompt says where to start and stop; copying or reordering a list
# from the prompt (sort, reverse) was measured not to be learned at the demo's size and budget.

COUNT_MAX = 60  # counts stay within 0..60, two-digit numbers that the demo tokenizer keeps whole
COUNT_LEN = (4, 15)  # items per count: 4 to 15 numbers
COUNT_UP_TEMPLATES: tuple[str, ...] = (
    "Count from {a} to {b}.",
    "List the whole numbers from {a} to {b}.",
    "Write every number from {a} up to {b}.",
    "Count upwards from {a} to {b}, separated by commas.",
)  # the first number is where to start, the second where to stop
COUNT_DOWN_TEMPLATES: tuple[str, ...] = (
    "Count down from {a} to {b}.",
    "List the whole numbers from {a} down to {b}.",
    "Write every number from {a} down to {b}.",
    "Count backwards from {a} to {b}, separated by commas.",
)  # counting down: the first number is the larger


def make_count_up(rng: random.Random) -> tuple[str, str, str]:
    """Make a range to count up: 'Count from 7 to 15.' -> '7, 8, ..., 15'."""
    n = rng.randint(*COUNT_LEN)
    a = rng.randint(0, COUNT_MAX - n + 1)
    b = a + n - 1
    return decorate(rng, rng.choice(COUNT_UP_TEMPLATES).format(a=a, b=b)), "", join_items(range(a, b + 1))


def answer_count_up(instruction: str, input: str) -> str:
    """Every number from the first to the second in the instruction."""
    a, b = find_ints(instruction)[:2]
    return join_items(range(a, b + 1))


def make_count_down(rng: random.Random) -> tuple[str, str, str]:
    """Make a range to count down: 'Count down from 15 to 7.' -> '15, 14, ..., 7'."""
    n = rng.randint(*COUNT_LEN)
    b = rng.randint(0, COUNT_MAX - n + 1)
    a = b + n - 1
    return decorate(rng, rng.choice(COUNT_DOWN_TEMPLATES).format(a=a, b=b)), "", join_items(range(a, b - 1, -1))


def answer_count_down(instruction: str, input: str) -> str:
    """Every number from the first down to the second in the instruction."""
    a, b = find_ints(instruction)[:2]
    return join_items(range(a, b - 1, -1))


SPAN_TEMPLATES: tuple[str, ...] = (
    "List the {unit} from {a} to {b}.",
    "Name every {one} from {a} through {b}, in order.",
    "Which {unit} come from {a} to {b}? List them all.",
    "Write out the {unit} starting with {a} and ending with {b}.",
)  # a span of weekdays or months, wrapping around the end of the week or year


def make_span(rng: random.Random, names: Sequence[str], unit: str, lo: int) -> tuple[str, str, str]:
    """A span of at least `lo` consecutive names (wrapping around), from its first name to its last."""
    i, n = rng.randrange(len(names)), rng.randint(lo, len(names))
    items = [names[(i + k) % len(names)] for k in range(n)]
    template = rng.choice(SPAN_TEMPLATES).format(unit=unit, one=unit[:-1], a=items[0], b=items[-1])
    return decorate(rng, template), "", join_items(items)


def answer_span(instruction: str, names: Sequence[str]) -> str:
    """The names from the first to the second one named in the instruction, wrapping around."""
    found = sorted((m.start(), name) for name in names for m in re.finditer(rf"\b{name}\b", instruction))
    i, j = names.index(found[0][1]), names.index(found[1][1])
    return join_items(names[(i + k) % len(names)] for k in range((j - i) % len(names) + 1))


def make_day_list(rng: random.Random) -> tuple[str, str, str]:
    """Make a span of 3-7 weekdays: 'List the days from Friday to Monday.' -> 'Friday, Saturday, Sunday, Monday'."""
    return make_span(rng, WEEKDAYS, "days", 3)


def answer_day_list(instruction: str, input: str) -> str:
    """The weekdays from the first to the second named."""
    return answer_span(instruction, WEEKDAYS)


def make_month_list(rng: random.Random) -> tuple[str, str, str]:
    """Make a span of 3-12 months: 'List the months from November to February.' -> 4 months."""
    return make_span(rng, MONTHS, "months", 3)


def answer_month_list(instruction: str, input: str) -> str:
    """The months from the first to the second named."""
    return answer_span(instruction, MONTHS)
