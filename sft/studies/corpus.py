"""The demo's pretraining corpus: every fact and sequence of the 16 families written as plain statements in several
phrasings, as the web states what Qwen2.5 knows before it is fine-tuned. No Alpaca template, no `### ...:` header,
no instruction phrasing of sft.studies.short_families / long_families: the base learns the facts, not the format.

Facts come from the families' own tables (every sum, capital, weekday, range ...); the families whose fact is a
sentence (count, extract, last_word) are stated for the input of every row of every split, so the corpus holds
every fact that held-out and test ask about. Own seed (`corpus_seed`): phrasings and document order only.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from sft.data.io import write_jsonl
from sft.studies.long_families import COUNT_LEN, COUNT_MAX
from sft.studies.prose import prose_sentences, title
from sft.studies.short_families import (
    ADD_MAX, ANTONYMS, CAPITALS, CATEGORY_OF, COMPARE_MAX, MONTHS, PARITY_MAX, SPELL_MAX, WEEKDAYS,
)
from sft.studies.vocab import join_items, spell_number

STATEMENTS_PER_DOCUMENT = 6  # statements in one text row, in paragraphs of 1-3, as a web page holds several
TITLE_SHARE = 0.5  # documents that open with a title line (sft.studies.prose.TITLES)
SECTION_SHARE = 0.3  # later paragraphs that open with one (a section of the page)
HELDOUT_SHARE = 0.05  # held-out documents: the same statements in new order and company (their loss, a gate figure)
PROSE_PER_STATEMENT = 1.0  # everyday sentences (sft.studies.prose) per fact statement: the words of the prompts


def _range_lists() -> list[tuple[str, list]]:
    """(kind, items) of every list the four long-output families can ask for."""
    out = []
    for n in range(COUNT_LEN[0], COUNT_LEN[1] + 1):
        for a in range(0, COUNT_MAX - n + 2):
            out += [("up", list(range(a, a + n))), ("down", list(range(a + n - 1, a - 1, -1)))]
    for names, lo in ((WEEKDAYS, 3), (MONTHS, 3)):
        for i in range(len(names)):
            for n in range(lo, len(names) + 1):
                out.append(("names", [names[(i + k) % len(names)] for k in range(n)]))
    return out


def table_statements() -> list[list[str]]:
    """Every fact of the table families and every list of the long-output families, each in all its phrasings."""
    facts = []
    for a in range(ADD_MAX + 1):
        for b in range(ADD_MAX + 1):
            facts.append([f"{a} plus {b} is {a + b}.", f"The sum of {a} and {b} is {a + b}.",
                          f"Adding {a} and {b} gives {a + b}.", f"{a} + {b} = {a + b}.",
                          f"The total of {a} and {b} is {a + b}."])
    for a in range(COMPARE_MAX + 1):
        for b in range(a + 1, COMPARE_MAX + 1):
            facts.append([f"{b} is larger than {a}.", f"{a} is smaller than {b}.",
                          f"Between {a} and {b}, the bigger number is {b} and the lower one is {a}.",
                          f"Of the numbers {a} and {b}, {b} is greater and {a} is less."])
    for n in range(SPELL_MAX + 1):
        w = spell_number(n)
        facts.append([f"The number {n} is written {w}.", f"{n} in words is {w}.", f"People spell {n} as {w}.",
                      f"Written in English words, {n} is {w}."])
    for word, other in sorted(ANTONYMS.items()):
        facts.append([f"The opposite of {word} is {other}.", f"{word} and {other} mean opposite things.",
                      f"{other} is the antonym of {word}.",
                      f"A word that means the opposite of '{word}' is '{other}'."])
    for country, city in CAPITALS.items():
        facts.append([f"The capital of {country} is {city}.", f"{city} is the capital city of {country}.",
                      f"{country} has its capital in {city}.", f"The capital of {country}, as every map shows, is {city}."])
    for names, unit in ((WEEKDAYS, "day"), (MONTHS, "month")):
        for i, name in enumerate(names):
            nxt = names[(i + 1) % len(names)]
            facts.append([f"After {name} comes {nxt}.", f"The {unit} before {nxt} is {name}.",
                          f"{nxt} follows {name}.", f"The {unit} following {name} is {nxt}."])
        if unit == "day":
            facts.append([f"If today is {name}, tomorrow is {nxt} and {name} was yesterday for {nxt}."])
    for i, name in enumerate(MONTHS, 1):
        facts.append([f"{name} is month number {i} of the year.", f"Month {i} is {name}.",
                      f"In the calendar, {name} is month {i}."])
    for word, category in sorted(CATEGORY_OF.items()):
        facts.append([f"A {word} is a kind of {category}.", f"The word {word} names a {category}.",
                      f"{word} belongs to the {category} group.",
                      f"Of animal, fruit, color and vehicle, the word {word} names a {category}."])
    for n in range(PARITY_MAX + 1):
        p = "even" if n % 2 == 0 else "odd"
        facts.append([f"{n} is an {p} number." if p == "odd" else f"{n} is an even number.",
                      f"The number {n} is {p}.", f"{n} is {p}, not {'odd' if p == 'even' else 'even'}."])
    for kind, items in _range_lists():
        a, b, text = items[0], items[-1], join_items(items)
        if kind == "names":
            one = "day" if a in WEEKDAYS else "month"
            facts.append([f"From {a} through {b}: {text}.", f"Every {one} starting with {a} and ending with {b}, in order: {text}."])
        else:
            way = "up" if kind == "up" else "down"
            facts.append([f"Counting {way} from {a} to {b}: {text}.",
                          f"The whole numbers from {a} {way} to {b}, separated by commas, are {text}."])
    return facts


def sentence_statements(rows: list[dict]) -> list[list[str]]:
    """The facts of the families whose fact is a sentence (its word count, last word, the name in it), for the
    input of every row given (every split's, so held-out and test facts are stated too)."""
    facts, done = [], set()
    for r in rows:
        key = (r["family"], r.get("input") or "")
        if key in done or r["family"] not in ("count", "extract", "last_word"):
            continue
        done.add(key)
        s, words = key[1], key[1].split()
        if r["family"] == "count":
            facts.append([f"The sentence '{s}' has {len(words)} words.", f"'{s}' is {len(words)} words long.",
                          f"The word count of the text '{s}' is {len(words)}."])
        elif r["family"] == "last_word":
            facts.append([f"The last word of '{s}' is {words[-1]}.", f"'{s}' ends with the word {words[-1]}.",
                          f"The final word in the text '{s}' is {words[-1]}."])
        else:
            name = next(w for w in words if w[:1].isupper())
            facts.append([f"The name in '{s}' is {name}.", f"'{s}' mentions {name}.",
                          f"The person mentioned in the sentence '{s}' is {name}."])
    return facts


def document(statements: list[str], rng: random.Random) -> str:
    """Statements as one plain-text document: paragraphs of 1-3 statements, sometimes under a title line."""
    paragraphs, i = [], 0
    while i < len(statements):
        n = rng.randint(1, 3)
        head = title(rng) + "\n" if paragraphs and rng.random() < SECTION_SHARE else ""  # a section's header
        paragraphs.append(head + " ".join(statements[i:i + n]))
        i += n
    head = [title(rng)] if rng.random() < TITLE_SHARE else []
    return "\n".join(head + ["\n\n".join(paragraphs)])


def build_corpus(out_dir: str | Path, split_rows: list[dict], seed: int) -> dict[str, Path]:
    """Write the corpus as plain-text rows: train.jsonl (every statement of every fact, in documents) and
    heldout.jsonl (a sample of the statements in new documents), and manifest.json; return the two paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = table_statements() + sentence_statements(split_rows)
    stated = [s for phrasings in facts for s in phrasings]
    prose = prose_sentences(int(PROSE_PER_STATEMENT * len(stated)), seed)
    statements = stated + prose
    rng = random.Random(seed)
    rng.shuffle(statements)
    k = STATEMENTS_PER_DOCUMENT
    train = [document(statements[i:i + k], rng) for i in range(0, len(statements), k)]
    # held out: facts in new company, and everyday sentences drawn apart from the training ones
    sample = rng.sample(stated, int(HELDOUT_SHARE * len(stated)) // k * k // 2)
    sample += prose_sentences(len(sample), seed + 1)
    rng.shuffle(sample)
    heldout = [document(sample[i:i + k], rng) for i in range(0, len(sample), k)]
    paths = {"train": out / "train.jsonl", "heldout": out / "heldout.jsonl"}
    write_jsonl(paths["train"], [{"text": t} for t in train])
    write_jsonl(paths["heldout"], [{"text": t} for t in heldout])
    manifest = {
        "description": "Plain statements of every demo fact (sft.studies.corpus): no template, no instruction.",
        "seed": seed, "facts": len(facts), "statements": len(stated), "prose_sentences": len(prose),
        "documents": {"train": len(train), "heldout": len(heldout)},
        "characters": {"train": sum(map(len, train)), "heldout": sum(map(len, heldout))},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return paths
