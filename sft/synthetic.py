"""Synthetic alpaca-schema instruction tasks with exactly checkable answers, for the offline demo."""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from sft.io import write_jsonl

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

MAX_DRAW_FACTOR = 50  # build_demo_dataset gives up after n * this draws, so an exhausted family fails loudly


@dataclass(frozen=True)
class Family:
    """One task family: a row generator and an independent answer checker."""

    name: str
    uses_input: bool
    make: Callable[[random.Random], tuple[str, str, str]]
    answer: Callable[[str, str], str]
    long_output: bool = False  # answers of many tokens (3-15 items); the evaluation reports these families apart


# ---------------------------------------------------------------- helpers


def spell_number(n: int) -> str:
    """Spell 0..9999 in English words, e.g. 347 -> 'three hundred forty-seven'."""
    if not 0 <= n <= 9999:
        raise ValueError(f"spell_number supports 0..9999, got {n}; pass a smaller number")
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
        raise ValueError(f"no quoted target in instruction {text!r}; quote the letter or word like 'e'")
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


# ---------------------------------------------------------------- add


ADD_MAX = 9  # two one-digit operands: a 100-entry table the tiny demo model can learn
ADD_TEMPLATES: tuple[Callable[[list[int]], str], ...] = (
    lambda ns: "What is " + " + ".join(map(str, ns)) + "?",
    lambda ns: "Add " + join_items(ns[:-1]) + f" and {ns[-1]}.",
    lambda ns: "Compute the sum of " + join_items(ns[:-1]) + f" and {ns[-1]}.",
    lambda ns: "Calculate " + " plus ".join(map(str, ns)) + ".",
    lambda ns: "Find the total of " + join_items(ns[:-1]) + f" and {ns[-1]}. Answer with the number only.",
)  # paraphrases for addition; all digits in the instruction are operands


def make_add(rng: random.Random) -> tuple[str, str, str]:
    """Make a two-operand addition of one-digit numbers (small enough for the tiny demo model)."""
    nums = [rng.randint(0, ADD_MAX) for _ in range(2)]
    return decorate(rng, rng.choice(ADD_TEMPLATES)(nums)), "", str(sum(nums))


def answer_add(instruction: str, input: str) -> str:
    """Sum every number in the instruction."""
    return str(sum(find_ints(instruction)))


# ---------------------------------------------------------------- count


COUNT_TEMPLATES: tuple[str, ...] = (
    "How many words are in the sentence below?",
    "Count the words in the input.",
    "How many words does the following text contain?",
    "Give the number of words in the text below.",
    "What is the word count of the input?",
)  # count all words of a short input (occurrence counts of a letter or word need copying)
COUNT_MIN_WORDS, COUNT_MAX_WORDS = 1, 8  # answers 1..8


def make_count(rng: random.Random) -> tuple[str, str, str]:
    """Make a short word-soup sentence whose word count is the answer."""
    words = draw_sentence(rng, COUNT_MIN_WORDS, COUNT_MAX_WORDS)
    return decorate(rng, rng.choice(COUNT_TEMPLATES)), " ".join(words), str(len(words))


def answer_count(instruction: str, input: str) -> str:
    """Count the words of the input."""
    return str(len(input.split()))


# ---------------------------------------------------------------- extract


EXTRACT_TEMPLATES: tuple[str, ...] = (
    "Which person is mentioned in the text below?",
    "Find the name of the person in the input.",
    "Extract the capitalized name from the following sentence.",
    "Who is named in the sentence below?",
    "Write down the name that occurs in the text below.",
)  # one planted name to find (several names, numbers or emails would need copying)


def make_extract(rng: random.Random) -> tuple[str, str, str]:
    """Make a lowercase sentence with one planted capitalised name to extract."""
    words = draw_sentence(rng, 2, 6)
    name = rng.choice(NAMES)
    words.insert(rng.randint(0, len(words)), name)
    return decorate(rng, rng.choice(EXTRACT_TEMPLATES)), " ".join(words), name


def answer_extract(instruction: str, input: str) -> str:
    """Return the capitalised words of the input (the planted names)."""
    return join_items(w for w in input.split() if w[:1].isupper())


# ---------------------------------------------------------------- compare


COMPARE_TEMPLATES: dict[bool, tuple[str, ...]] = {
    True: (
        "Which is larger, {a} or {b}?",
        "Which number is bigger: {a} or {b}?",
        "Of {a} and {b}, which is greater?",
        "Tell me the larger of the two numbers {a} and {b}.",
    ),
    False: (
        "Which is smaller, {a} or {b}?",
        "Which number is less: {a} or {b}?",
        "Of {a} and {b}, which is lower?",
        "Tell me the smaller of the two numbers {a} and {b}.",
    ),
}  # keyed by larger; the parser looks for 'small', 'less', 'lower'
COMPARE_MAX = 9  # one-digit numbers: a 90-pair table the tiny demo model can learn
COMPARE_SMALLER_KEYS: tuple[str, ...] = ("small", "less", "lower")  # marks a pick-the-minimum question


def make_compare(rng: random.Random) -> tuple[str, str, str]:
    """Make a question asking for the larger or smaller of two distinct one-digit numbers."""
    a, b = rng.sample(range(COMPARE_MAX + 1), 2)
    larger = rng.random() < 0.5
    instruction = decorate(rng, rng.choice(COMPARE_TEMPLATES[larger]).format(a=a, b=b))
    return instruction, "", str(max(a, b) if larger else min(a, b))


def answer_compare(instruction: str, input: str) -> str:
    """Pick the smaller or larger number in the instruction, as asked."""
    nums = find_ints(instruction)
    return str(min(nums) if has_any(instruction, COMPARE_SMALLER_KEYS) else max(nums))


# ---------------------------------------------------------------- spell


SPELL_TEMPLATES: tuple[str, ...] = (
    "Write the number {n} in words.",
    "Spell out {n} in English.",
    "How is {n} written in words?",
    "Express the number {n} in English words.",
)  # paraphrases for spelling a number out


SPELL_MAX = 20  # spell 0..20: a 21-entry table of one-word answers; spell_number supports up to 9999


def make_spell(rng: random.Random) -> tuple[str, str, str]:
    """Make a number to spell out in English words."""
    n = rng.randint(0, SPELL_MAX)
    return decorate(rng, rng.choice(SPELL_TEMPLATES).format(n=n)), "", spell_number(n)


def answer_spell(instruction: str, input: str) -> str:
    """Spell out the number in the instruction."""
    (n,) = find_ints(instruction)
    return spell_number(n)


# ---------------------------------------------------------------- last_word


LAST_WORD_TEMPLATES: tuple[str, ...] = (
    "What is the last word of the sentence below?",
    "Return the final word of the input.",
    "Which word comes last in the following text?",
    "Give only the last word of the text below.",
)  # paraphrases for picking the last word


def make_last_word(rng: random.Random) -> tuple[str, str, str]:
    """Make a sentence whose last word is the answer."""
    words = draw_sentence(rng, 3, 8)
    return rng.choice(LAST_WORD_TEMPLATES), " ".join(words), words[-1]


def answer_last_word(instruction: str, input: str) -> str:
    """Return the last whitespace-separated word of the input."""
    return input.split()[-1]


# ---------------------------------------------------------------- antonym


ANTONYM_PAIRS: tuple[tuple[str, str], ...] = (
    ("big", "small"), ("hot", "cold"), ("fast", "slow"), ("happy", "sad"), ("old", "young"),
    ("dark", "light"), ("early", "late"), ("easy", "hard"), ("loud", "quiet"), ("long", "short"),
    ("strong", "weak"), ("wet", "dry"),
)  # 12 pairs, each word in one pair only; asked in both directions: a 24-entry table
ANTONYMS: dict[str, str] = {**dict(ANTONYM_PAIRS), **{b: a for a, b in ANTONYM_PAIRS}}
ANTONYM_TEMPLATES: tuple[str, ...] = (
    "What is the opposite of '{w}'?",
    "Give the antonym of the word '{w}'.",
    "Name a word that means the opposite of '{w}'.",
    "Which word is the antonym of '{w}'?",
    "What word has the opposite meaning to '{w}'?",
)  # the word is quoted in the instruction


def make_antonym(rng: random.Random) -> tuple[str, str, str]:
    """Make a question for the antonym of a word from a fixed table."""
    word = rng.choice(sorted(ANTONYMS))
    return decorate(rng, rng.choice(ANTONYM_TEMPLATES).format(w=word)), "", ANTONYMS[word]


def answer_antonym(instruction: str, input: str) -> str:
    """Look the quoted word up in the antonym table."""
    return ANTONYMS[find_quoted(instruction)]


# ---------------------------------------------------------------- capital


CAPITALS: dict[str, str] = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens", "Peru": "Lima",
    "Kenya": "Nairobi", "Canada": "Ottawa", "Cuba": "Havana", "Norway": "Oslo", "Poland": "Warsaw",
    "Austria": "Vienna",
}  # 16 real country -> capital pairs: a 16-entry table
CAPITAL_TEMPLATES: tuple[str, ...] = (
    "What is the capital of {c}?",
    "Name the capital city of {c}.",
    "Which city is the capital of {c}?",
    "Tell me the capital of {c}.",
    "{c} has which city as its capital?",
)  # the country is named in the instruction


def make_capital(rng: random.Random) -> tuple[str, str, str]:
    """Make a question for the capital of a country from a fixed table."""
    country = rng.choice(sorted(CAPITALS))
    return decorate(rng, rng.choice(CAPITAL_TEMPLATES).format(c=country)), "", CAPITALS[country]


def answer_capital(instruction: str, input: str) -> str:
    """Find the country named in the instruction and look up its capital."""
    return CAPITALS[find_key(instruction, CAPITALS)]


# ---------------------------------------------------------------- weekday


WEEKDAYS: tuple[str, ...] = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WEEKDAY_TEMPLATES: dict[bool, tuple[str, ...]] = {
    False: (
        "What day comes after {d}?",
        "Which day of the week follows {d}?",
        "Name the day after {d}.",
        "If today is {d}, what day is tomorrow?",
    ),
    True: (
        "What day comes before {d}?",
        "Which day of the week precedes {d}?",
        "Name the day before {d}.",
        "If today is {d}, what day was yesterday?",
    ),
}  # keyed by backwards; the parser looks for 'before', 'precedes', 'yesterday'
BACKWARD_KEYS: tuple[str, ...] = ("before", "preced", "yesterday")  # marks the previous day or month


def make_weekday(rng: random.Random) -> tuple[str, str, str]:
    """Make a question for the day after or before a weekday: a 14-entry table."""
    i = rng.randrange(len(WEEKDAYS))
    back = rng.random() < 0.5
    instruction = decorate(rng, rng.choice(WEEKDAY_TEMPLATES[back]).format(d=WEEKDAYS[i]))
    return instruction, "", WEEKDAYS[(i + (-1 if back else 1)) % len(WEEKDAYS)]


def answer_weekday(instruction: str, input: str) -> str:
    """Step one day forwards or backwards from the weekday in the instruction."""
    i = WEEKDAYS.index(find_key(instruction, WEEKDAYS))
    return WEEKDAYS[(i + (-1 if has_any(instruction, BACKWARD_KEYS) else 1)) % len(WEEKDAYS)]


# ---------------------------------------------------------------- month


MONTHS: tuple[str, ...] = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
MONTH_TEMPLATES: dict[str, tuple[str, ...]] = {
    "next": (
        "What month comes after {m}?",
        "Which month follows {m}?",
        "Name the month after {m}.",
        "What is the month following {m}?",
    ),
    "previous": (
        "What month comes before {m}?",
        "Which month precedes {m}?",
        "Name the month before {m}.",
        "What is the month preceding {m}?",
    ),
    "number": (
        "What is month number {n} of the year?",
        "Which month is month {n}?",
        "Name the month with number {n}.",
        "Which month is number {n} in the calendar?",
    ),
}  # next/previous month or month number -> name: a 36-entry table


def make_month(rng: random.Random) -> tuple[str, str, str]:
    """Make a question for the next or previous month, or the month with a given number."""
    kind = rng.choice(("next", "previous", "number"))
    i = rng.randrange(len(MONTHS))
    template = rng.choice(MONTH_TEMPLATES[kind])
    if kind == "number":
        return decorate(rng, template.format(n=i + 1)), "", MONTHS[i]
    step = 1 if kind == "next" else -1
    return decorate(rng, template.format(m=MONTHS[i])), "", MONTHS[(i + step) % len(MONTHS)]


def answer_month(instruction: str, input: str) -> str:
    """Name the month with the number in the instruction, or step from the month it names."""
    nums = find_ints(instruction)
    if nums:
        return MONTHS[nums[0] - 1]
    i = MONTHS.index(find_key(instruction, MONTHS))
    return MONTHS[(i + (-1 if has_any(instruction, BACKWARD_KEYS) else 1)) % len(MONTHS)]


# ---------------------------------------------------------------- category


CATEGORIES: dict[str, tuple[str, ...]] = {
    "animal": ("cat", "dog", "horse", "cow", "pig", "lion", "tiger", "wolf"),
    "fruit": ("apple", "banana", "cherry", "grape", "lemon", "mango", "pear", "plum"),
    "color": ("red", "blue", "green", "yellow", "purple", "pink", "brown", "black"),
    "vehicle": ("car", "bus", "train", "truck", "plane", "boat", "ship", "bike"),
}  # 32 words in 4 categories: a 32-entry table
CATEGORY_OF: dict[str, str] = {word: cat for cat, words in CATEGORIES.items() for word in words}
CATEGORY_TEMPLATES: tuple[str, ...] = (
    "Is the word below an animal, a fruit, a color or a vehicle?",
    "Which category does the input word belong to: animal, fruit, color or vehicle?",
    "Classify the following word as animal, fruit, color or vehicle.",
    "Say whether the word below names an animal, a fruit, a color or a vehicle.",
    "What kind of thing is the input: animal, fruit, color or vehicle?",
)  # the word is the input; the answer is one category name


def make_category(rng: random.Random) -> tuple[str, str, str]:
    """Make a word from a fixed table to classify."""
    word = rng.choice(sorted(CATEGORY_OF))
    return decorate(rng, rng.choice(CATEGORY_TEMPLATES)), word, CATEGORY_OF[word]


def answer_category(instruction: str, input: str) -> str:
    """Look the input word up in the category table."""
    return CATEGORY_OF[input.strip()]


# ---------------------------------------------------------------- parity


PARITY_TEMPLATES: tuple[str, ...] = (
    "Is {n} odd or even?",
    "Is the number {n} even or odd?",
    "Tell me whether {n} is odd or even.",
    "Say if {n} is an even or an odd number.",
    "Answer odd or even: {n}.",
)  # the number is in the instruction; the answer is 'odd' or 'even'
PARITY_MAX = 99  # numbers 0..99


def make_parity(rng: random.Random) -> tuple[str, str, str]:
    """Make a question for the parity of a number up to 99."""
    n = rng.randint(0, PARITY_MAX)
    return decorate(rng, rng.choice(PARITY_TEMPLATES).format(n=n)), "", "even" if n % 2 == 0 else "odd"


def answer_parity(instruction: str, input: str) -> str:
    """Say whether the number in the instruction is odd or even."""
    (n,) = find_ints(instruction)
    return "even" if n % 2 == 0 else "odd"


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
        raise ValueError(f"{what} is empty; pass None for all or some of {list(known)}")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; choose from {list(known)}")
    return names


def resolve_families(families: Sequence[str] | None) -> list[str]:
    """Return the requested family names in order, defaulting to all, rejecting unknown names."""
    return resolve_names(families, list(FAMILIES))


def check_split_sizes(**counts: int) -> None:
    """A ValueError naming the first negative split size (n_train=..., n_heldout=..., n_test=...)."""
    for name, count in counts.items():
        if count < 0:
            raise ValueError(f"{name} must be >= 0, got {count}")


def make_row(family: str, rng: random.Random) -> dict:
    """Draw one row of a family as an alpaca-schema dict with its family name."""
    instruction, input, output = FAMILIES[family].make(rng)
    return {"instruction": instruction, "input": input, "output": output, "family": family}


def generate_rows(n: int, seed: int, families: Sequence[str] | None = None) -> list[dict]:
    """Generate n rows cycling over families, deterministic in seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    names = resolve_families(families)
    rng = random.Random(seed)
    return [make_row(names[i % len(names)], rng) for i in range(n)]


# ---------------------------------------------------------------- dataset files


def derive_seed(seed: int, split: str) -> int:
    """Derive a per-split seed so splits never share a random stream, even across base seeds."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{split}".encode()).digest()[:8], "big")


def fill_split(n: int, seed: int, families: list[str], seen: set[tuple[str, str]]) -> list[dict]:
    """Draw n rows balanced over families, skipping (instruction, input) pairs in seen, and add the new ones to seen."""
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
                raise ValueError(
                    f"could not draw {n} unique rows (family {family!r} looks exhausted); lower the split sizes"
                )
            row = make_row(family, rng)
            key = (row["instruction"], row["input"])
            if key in seen:
                continue
            seen.add(key)
            rows.append(row)
            quotas[i] -= 1
    return rows


def build_demo_dataset(
    out_dir: str | Path, n_train: int, n_heldout: int, n_test: int, seed: int = 0
) -> dict[str, Path]:
    """Write train/heldout/test JSONL splits, disjoint on (instruction, input), plus manifest.json."""
    check_split_sizes(n_train=n_train, n_heldout=n_heldout, n_test=n_test)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    families = list(FAMILIES)
    seen: set[tuple[str, str]] = set()
    splits = {
        "train": fill_split(n_train, derive_seed(seed, "train"), families, seen),
        "heldout": fill_split(n_heldout, derive_seed(seed, "heldout"), families, seen),
        "test": fill_split(n_test, derive_seed(seed, "test"), families, seen),
    }
    # Test rows carry the gold answer under its own key so evaluation never reads `output` by accident.
    splits["test"] = [{**row, "answer": row["output"]} for row in splits["test"]]
    paths = {name: out / f"{name}.jsonl" for name in splits}
    for name, rows in splits.items():
        write_jsonl(paths[name], rows)
    manifest = {
        "description": "Synthetic alpaca-schema instruction tasks with exact answers (sft.synthetic); "
        "splits are disjoint on (instruction, input).",
        "seed": seed,
        "counts": {name: len(rows) for name, rows in splits.items()},
        "families": families,
        "family_counts": {
            name: {f: sum(r["family"] == f for r in rows) for f in families} for name, rows in splits.items()
        },
        "files": {name: path.name for name, path in paths.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return paths


# ---------------------------------------------------------------- scoring


def score_exact(prediction: str, answer: str) -> bool:
    """Return True when prediction equals answer after stripping surrounding whitespace."""
    return prediction.strip() == answer.strip()
