"""The demo's 12 short-output families (answers of 1-2 tokens): each a maker of (instruction, input, output)
and an answerer that recomputes the output from the instruction alone, so every answer is exactly checkable."""

from __future__ import annotations

import random
from typing import Callable

from sft.studies.vocab import (
    NAMES,
    decorate,
    draw_sentence,
    find_ints,
    find_key,
    find_quoted,
    has_any,
    join_items,
    spell_number,
)

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
