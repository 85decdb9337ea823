"""Synthetic dialogues over the demo's task families: a later user turn refers to an earlier answer.

A dialogue opens with one or two exchanges drawn from a family of sft.studies.synthetic ("Add 3 and 4." -> "7"),
then a follow-up that names no value of its own ("Spell that number.") and whose answer is a family's
answer function applied to the earlier answer (answer_spell("Write the number 7 in words.") -> "seven").
The follow-up alone does not determine its answer: the model has to read the conversation. Splits are
written as `messages` JSONL, which sft.data reads like any conversation dataset.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sft.data.errors import UserError
from sft.data.io import write_jsonl
from sft.studies.synthetic import (
    FAMILIES,
    MAX_DRAW_FACTOR,
    check_split_sizes,
    derive_seed,
    resolve_names,
)


@dataclass(frozen=True)
class FollowUp:
    """A later user turn about earlier answers, and the explicit instruction it stands for."""

    texts: tuple[str, ...]  # paraphrases of the user turn; none names a value, so only the history answers it
    family: str  # the family of sft.studies.synthetic whose answer function gives the reply
    ask: Callable[[list[str]], str]  # the earlier answers -> the explicit instruction of that family


@dataclass(frozen=True)
class Kind:
    """One kind of dialogue: opening exchanges from families, then one of the follow-ups."""

    name: str
    openings: tuple[str, ...]  # the family of each opening exchange, in order
    follow_ups: tuple[FollowUp, ...]  # one is drawn per dialogue


NEXT_DAY = FollowUp(("And the day after that?", "Which day follows that one?", "What day comes after that day?"),
                    "weekday", lambda a: f"What day comes after {a[0]}?")
PREVIOUS_DAY = FollowUp(("And the day before that?", "Which day precedes that one?", "What day comes before that day?"),
                        "weekday", lambda a: f"What day comes before {a[0]}?")
NEXT_MONTH = FollowUp(("And the month after that?", "Which month follows that one?",
                       "What month comes after that month?"), "month", lambda a: f"What month comes after {a[0]}?")
PREVIOUS_MONTH = FollowUp(("And the month before that?", "Which month precedes that one?",
                           "What month comes before that month?"), "month",
                          lambda a: f"What month comes before {a[0]}?")
SPELL_IT = FollowUp(("Spell that number.", "Write that number in words.", "How is that number written in words?"),
                    "spell", lambda a: f"Write the number {a[0]} in words.")
PARITY_OF_IT = FollowUp(("Is that number odd or even?", "Is the answer even or odd?", "Is that odd or even?"),
                        "parity", lambda a: f"Is {a[0]} odd or even?")
OPPOSITE_OF_IT = FollowUp(("And the opposite of that word?", "What is the antonym of that word?",
                           "Which word means the opposite of that?"), "antonym",
                          lambda a: f"What is the opposite of '{a[0]}'?")
LARGER_SUM = FollowUp(("Which of the two sums is larger?", "Which of those two answers is bigger?",
                       "Which result was greater?"), "compare", lambda a: f"Which is larger, {a[0]} or {a[1]}?")
SMALLER_SUM = FollowUp(("Which of the two sums is smaller?", "Which of those two answers is less?",
                        "Which result was lower?"), "compare", lambda a: f"Which is smaller, {a[0]} or {a[1]}?")

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("add_spell", ("add",), (SPELL_IT,)),
        Kind("count_parity", ("count",), (PARITY_OF_IT,)),
        Kind("weekday_step", ("weekday",), (NEXT_DAY, PREVIOUS_DAY)),
        Kind("month_step", ("month",), (NEXT_MONTH, PREVIOUS_MONTH)),
        Kind("antonym_back", ("antonym",), (OPPOSITE_OF_IT,)),
        Kind("sums_compare", ("add", "add"), (LARGER_SUM, SMALLER_SUM)),
    )
}  # every dialogue kind, in the order rows cycle through: five of 2 exchanges, one of 3

SYSTEM_PROMPTS: tuple[str, ...] = ("You are a helpful assistant. ", "Answer briefly. ", "Reply with the answer only. ")
SYSTEM_SHARE = 0.25  # share of dialogues that open with a system turn (the alpaca template prepends it to the
# first instruction, hence the trailing space)


def user_text(instruction: str, input: str) -> str:
    """One user turn from a family's (instruction, input): the input on its own line (turns are plain text)."""
    return f"{instruction}\n{input}" if input else instruction


def make_dialogue(kind: str, rng: random.Random) -> dict:
    """Draw one dialogue of a kind: {"messages": [...], "kind": kind, "answer": the last reply}."""
    spec = KINDS[kind]
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < SYSTEM_SHARE else []
    answers: list[str] = []
    while len(answers) < len(spec.openings):
        instruction, input, output = FAMILIES[spec.openings[len(answers)]].make(rng)
        if output in answers:  # two equal sums leave nothing to compare
            continue
        messages += [{"role": "user", "content": user_text(instruction, input)},
                     {"role": "assistant", "content": output}]
        answers.append(output)
    follow = rng.choice(spec.follow_ups)
    answer = FAMILIES[follow.family].answer(follow.ask(answers), "")
    messages += [{"role": "user", "content": rng.choice(follow.texts)}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "kind": kind, "answer": answer}


def resolve_kinds(kinds: list[str] | None) -> list[str]:
    """The requested kind names in order, defaulting to all, rejecting unknown names."""
    return resolve_names(kinds, list(KINDS), "dialogue kinds")


def fill_unique(n: int, seed: int, kinds: list[str], seen: set[str], make: Callable[[str, random.Random], dict],
                key: Callable[[dict], str], what: str) -> list[dict]:
    """Draw n rows with make(kind, rng), cycling over kinds, skipping rows whose key is already in seen (and adding
    the new ones): the splits of the dialogues and of the tool-use conversations are disjoint this way."""
    rng = random.Random(seed)
    rows: list[dict] = []
    draws = 0
    while len(rows) < n:
        draws += 1
        if draws > MAX_DRAW_FACTOR * max(n, 1):
            raise UserError(f"could not draw {n} {what}; lower the split sizes")
        row = make(kinds[len(rows) % len(kinds)], rng)
        if key(row) not in seen:
            seen.add(key(row))
            rows.append(row)
    return rows


def fill_dialogues(n: int, seed: int, kinds: list[str], seen: set[str]) -> list[dict]:
    """Draw n dialogues cycling over kinds, skipping conversations already in seen (and adding the new ones)."""
    return fill_unique(n, seed, kinds, seen, make_dialogue, lambda row: json.dumps(row["messages"]),
                       "unique dialogues")


def build_dialogue_dataset(out_dir: str | Path, n_train: int, n_heldout: int, n_test: int, seed: int = 0,
                           kinds: list[str] | None = None) -> dict[str, Path]:
    """Write train/heldout/test `messages` JSONL splits, disjoint on the whole conversation, plus manifest.json."""
    check_split_sizes(n_train=n_train, n_heldout=n_heldout, n_test=n_test)
    names = resolve_kinds(kinds)
    out = Path(out_dir)
    seen: set[str] = set()
    splits = {split: fill_dialogues(n, derive_seed(seed, f"dialogues:{split}"), names, seen)
              for split, n in (("train", n_train), ("heldout", n_heldout), ("test", n_test))}
    paths = {split: write_jsonl(out / f"{split}.jsonl", rows) for split, rows in splits.items()}
    manifest = {
        "description": "Synthetic dialogues over the demo's task families (sft.studies.dialogues): the last user turn "
                       "refers to an earlier answer; splits are disjoint on the whole conversation.",
        "seed": seed,
        "counts": {split: len(rows) for split, rows in splits.items()},
        "kinds": names,
        "files": {split: path.name for split, path in paths.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return paths
