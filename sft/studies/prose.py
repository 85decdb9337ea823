"""The demo world's everyday language: sentences that use the words of the fine-tuning prompts (the template's
preamble, the families' instructions and their decorations) in other sentences, as web text uses the words a
prompt is made of. Qwen2.5 has read such text before it meets the Alpaca template; the tiny base reads this.

What it never holds (tests/studies/test_pretrain.py checks the written corpus): a `###` header, a clause of the
Alpaca preamble, or the fixed text of any family's instruction (each run of 4+ words between its slots). So the
base learns the words and how they combine, not the instruction format or an instruction -> answer mapping.
"""

from __future__ import annotations

import random

from sft.studies.short_families import CAPITALS, CATEGORY_OF, MONTHS, WEEKDAYS
from sft.studies.vocab import NAMES, WORDS, spell_number

# Who does things in the sentences: people and roles, so "the teacher writes" and "Anna writes" are both met.
PEOPLE = ("the teacher", "a student", "my friend", "the editor", "our team", "the manager", "every reader", "a child",
          "the writer", "her brother", "the class", "a visitor", *NAMES)
# What they do, third person: the words of the preamble and the instructions, combined in other ways.
DOES = (
    "writes an instruction for each task", "reads the instruction twice", "describes the task in one sentence",
    "describes a new task every morning", "gives further context to the class", "provides an input for the game",
    "pairs every question with an answer", "writes a response to each letter", "completes the request on time",
    "answers the question directly", "sends a short request", "reads the text below the picture",
    "counts the words in a long letter", "spells each number in English words", "names a city in every song",
    "lists the days of the week in order", "gives a short answer", "keeps the answer short", "tells a story",
    "asks which city is the capital", "learns the capital city of a country", "finds the total of a bill",
    "adds the numbers on a card", "computes the sum in her head", "calculates the total price",
    "compares two numbers", "picks the larger of two cards", "picks the smaller of two cards",
    "says whether a number is odd", "checks if the number is even", "knows every even number below ten",
    "writes down the name of each person", "extracts the names from a letter", "mentions a person by name",
    "reads a capitalized name aloud", "returns the final word of a poem", "finds the last word of a sentence",
    "looks up the opposite of a word", "learns an antonym every day", "explains what a word means",
    "gives each word its meaning", "sorts words into a category", "classifies each word as an animal or a fruit",
    "says what kind of thing a word names", "counts upwards to ten", "counts backwards from ten",
    "writes every whole number on a line", "separates the items by commas", "lists them all in order",
    "starts with the first item and ends with the last", "names every month of the year",
    "checks the calendar before a trip", "plans what day it is tomorrow", "remembers what day it was yesterday",
    "knows which day follows the weekend", "knows which month precedes the summer", "expresses an idea in words",
    "writes a number in words", "answers with the number only", "replies with just the answer",
    "tries a quick task", "says thanks", "answers odd or even", "finds the word count of a page",
    "tells me the answer", "names a word with the opposite meaning", "writes out a list", "finds a greater number",
)
# Things said with a relative clause ("a note that ..."): English's most common way to describe a thing.
THINGS = ("an instruction", "a response", "a task", "a request", "an input", "a note", "a letter", "an answer",
          "a question", "a story", "a list", "a sentence")
THAT = ("describes a trip", "completes the list", "provides further context", "fits the question", "takes a day",
        "names a city", "appropriately ends the story", "describes the task", "completes the request",
        "pairs a word with its meaning", "asks for a number", "comes after the title", "mentions a person")
WHEN = ("", "", "", " every day", " on {day}", " in {month}", " in English", " with care", " appropriately",
        " in order", " at school", " for the class", " again", " below")
# Sentences of a different shape, with slots filled from the families' own tables.
SHAPES = (
    "Here is a task for {person}: a word is given, and the word is {word}.",
    "A question came from {person}, and the answer was short.",
    "The instruction was clear, and the response was brief.",
    "Each request is answered in a few words.",
    "The input for the game was a sentence about a {word}.",
    "Context helps a reader understand the request.",
    "The following text is about a {word} and a {word2}.",
    "The sentence below mentions {name}.",
    "A task can be easy or hard.",
    "The word {word} has {letters} letters and is written in lowercase.",
    "{name} lives in {city}, the capital of {country}.",
    "{name} visited {city} in {month}.",
    "On {day}, {name} read a book about {country}.",
    "The number {n} is written {spelled} in English.",
    "Today is {day}, so the week goes on.",
    "A {thing} is a kind of {category}.",
    "The calendar on the wall shows {month}.",
    "Whole numbers are separated by commas in a list.",
    "The answer to the question was a single number.",
    "The two numbers on the card were {n} and {m}.",
    "{Person} wrote a letter that describes a trip to {city}.",
    "{Person} needs a word that means the same as {word}.",
    "It was a task that took a whole day.",
    "The note that {name} wrote provides some context.",
    "We want an answer that fits the question.",
    "A good story is one that keeps the reader awake.",
    "Write a note to {name} about the {word}.",
    "Read the letter from {name} again. Thanks!",
    "Please bring a {word} on {day}.",
    "Try to finish the list before {month}.",
    "Keep the {word} in a warm place.",
    "Be kind to {name}.",
    "What does {name} like about {city}?",
    "Is it {day} today?",
    "Which {word} belongs to {name}?",
    "How many friends came to the party on {day}?",
    "Who wrote the letter about the {word}?",
    "Why does {name} like {month} so much?",
    "Where is the {word}? It is in {city}.",
    "Can you find {country} on the map?",
    "Did {name} describe the {word} well?",
    "Question: where does {name} live? Answer: in {city}.",
    "Please answer: who has the {word}? {name} does.",
    "Quick task: find the {word} before {day}.",
    "Try this: read the note from {name} aloud.",
    "Be brief when {person} asks about the {word}.",
    "Keep it short, said {name}.",
    "{Person} likes to answer directly.",
    "{Person} gave only the answer and nothing more.",
    "Reply soon, {name}. Thanks!",
)
# Document titles: the base meets line breaks, headers and colons before a line, as web pages have them; never the
# template's own headers (Instruction, Input, Response).
TITLES = ("### Notes", "## A short story", "### Facts about {country}", "## Numbers", "### The week", "Words:",
          "Questions and answers:", "Today:", "### Homework", "Dear {name},", "## From the calendar", "Note:")


def title(rng: random.Random) -> str:
    """A document's first line."""
    return rng.choice(TITLES).format(country=rng.choice(sorted(CAPITALS)), name=rng.choice(NAMES))


def prose_sentences(n: int, seed: int) -> list[str]:
    """n sentences of the demo world's everyday language, drawn with `seed`."""
    rng = random.Random(f"prose:{seed}")
    out = []
    for _ in range(n):
        if rng.random() < 0.2:
            person = rng.choice(PEOPLE)
            out.append(f"{person[0].upper()}{person[1:]} wrote {rng.choice(THINGS)} that {rng.choice(THAT)}.")
            continue
        if rng.random() < 0.5:
            person = rng.choice(PEOPLE)
            when = rng.choice(WHEN).format(day=rng.choice(WEEKDAYS), month=rng.choice(MONTHS))
            out.append(f"{person[0].upper()}{person[1:]} {rng.choice(DOES)}{when}.")
            continue
        word, country = rng.choice(WORDS), rng.choice(sorted(CAPITALS))
        thing = rng.choice(sorted(CATEGORY_OF))
        n_, m = rng.randint(0, 99), rng.randint(0, 99)
        person = rng.choice(PEOPLE)
        out.append(rng.choice(SHAPES).format(
            person=person, Person=person[0].upper() + person[1:], word=word, word2=rng.choice(WORDS), letters=spell_number(len(word)),
            name=rng.choice(NAMES), city=CAPITALS[country], country=country, month=rng.choice(MONTHS),
            day=rng.choice(WEEKDAYS), n=n_, m=m, spelled=spell_number(n_), thing=thing, category=CATEGORY_OF[thing]))
    return out
