import json
import random
import re

import pytest

from sft.studies.vocab import DECOR_PREFIXES, DECOR_SUFFIXES, WORDS, spell_number
from sft.studies.synthetic import FAMILIES, build_demo_dataset, generate_rows


def test_same_seed_same_rows_and_other_seed_other_rows():
    assert generate_rows(60, seed=3) == generate_rows(60, seed=3)
    assert generate_rows(60, seed=3) != generate_rows(60, seed=4)


def test_generate_uses_a_local_rng_only():
    random.seed(123)
    before = random.random()
    random.seed(123)
    generate_rows(20, seed=0)
    assert random.random() == before


def test_families_cover_input_and_no_input_and_each_has_templates():
    assert len(FAMILIES) >= 8
    assert {f.uses_input for f in FAMILIES.values()} == {True, False}
    rows = generate_rows(len(FAMILIES) * 300, seed=0)
    assert {r["family"] for r in rows} == set(FAMILIES)
    for name, family in FAMILIES.items():
        mine = [r for r in rows if r["family"] == name]
        assert len(mine) == 300  # balanced by cycling
        assert all((r["input"] != "") == family.uses_input for r in mine)
        # Paraphrases: at least 4 distinct instruction shapes once digits and quoted targets are masked.
        shapes = {re.sub(r"\d+", "#", re.sub(r"'[^']*'", "'#'", r["instruction"])) for r in mine}
        assert len(shapes) >= 4, (name, shapes)


def test_output_lengths_span_one_word_to_dozens():
    words = [len(r["output"].replace(",", " ").split()) for r in generate_rows(2000, seed=1)]
    assert min(words) == 1
    assert max(words) >= 12


def test_every_generated_answer_recomputes_from_instruction_and_input():
    for r in generate_rows(3000, seed=7):
        assert FAMILIES[r["family"]].answer(r["instruction"], r["input"]) == r["output"], r


def test_answer_parsers_on_hand_written_rows():
    assert FAMILIES["add"].answer("What is 2 + 5?", "") == "7"
    assert FAMILIES["count"].answer("Question: Count the words in the input. Be brief.", "big red dog") == "3"
    assert FAMILIES["extract"].answer("Who is named in the sentence below?", "a big Anna dog") == "Anna"
    assert FAMILIES["compare"].answer("Which is smaller, 4 or 9? Thanks!", "") == "4"
    assert FAMILIES["spell"].answer("Write the number 17 in words.", "") == "seventeen"
    assert FAMILIES["last_word"].answer("Return the final word of the input.", "a b c") == "c"
    assert FAMILIES["antonym"].answer("Give the antonym of the word 'hot'.", "") == "cold"
    assert FAMILIES["antonym"].answer("What is the opposite of 'cold'?", "") == "hot"
    assert FAMILIES["capital"].answer("Try this: What is the capital of France?", "") == "Paris"
    assert FAMILIES["capital"].answer("Austria has which city as its capital?", "") == "Vienna"
    assert FAMILIES["weekday"].answer("Name the day after Sunday.", "") == "Monday"
    assert FAMILIES["weekday"].answer("If today is Monday, what day was yesterday?", "") == "Sunday"
    assert FAMILIES["month"].answer("What month comes before January?", "") == "December"
    assert FAMILIES["month"].answer("Which month follows May?", "") == "June"
    assert FAMILIES["month"].answer("What is month number 9 of the year?", "") == "September"
    assert FAMILIES["category"].answer("Classify the following word as animal, fruit, color or vehicle.", "plum") == (
        "fruit"
    )
    assert FAMILIES["parity"].answer("Is 37 odd or even?", "") == "odd"
    assert FAMILIES["parity"].answer("Answer odd or even: 0.", "") == "even"
    assert FAMILIES["count_up"].answer("Quick task: Count from 8 to 12. Be brief.", "") == "8, 9, 10, 11, 12"
    assert FAMILIES["count_down"].answer("Count backwards from 10 to 7, separated by commas.", "") == "10, 9, 8, 7"
    assert FAMILIES["day_list"].answer("List the days from Saturday to Monday.", "") == "Saturday, Sunday, Monday"
    assert FAMILIES["month_list"].answer("Name every month from May through July, in order.", "") == (
        "May, June, July"
    )
    assert FAMILIES["month_list"].answer("Which months come from November to January? List them all.", "") == (
        "November, December, January"  # wraps around the end of the year
    )


def test_decorations_keep_every_parser_keyword_out():
    # Prefixes/suffixes must not carry digits, quotes or words the parsers key on.
    for text in DECOR_PREFIXES + DECOR_SUFFIXES:
        assert not re.search(r"[\d']", text)
        low = text.lower()
        for key in ("small", "less", "lower", "before", "preced", "yesterday", "reverse", "descending", "title"):
            assert key not in low, (text, key)


def test_most_families_are_lookups_with_short_outputs():
    # Most families answer with 1-3 words; the long_output ones with 3-15 items.
    rows = generate_rows(len(FAMILIES) * 200, seed=4)
    mean_words = {
        name: sum(len(r["output"].replace(",", " ").split()) for r in rows if r["family"] == name) / 200
        for name in FAMILIES
    }
    assert sum(m <= 3 for m in mean_words.values()) >= len(FAMILIES) // 2 + 1, mean_words
    assert max(mean_words.values()) >= 4, mean_words
    long = {name for name, f in FAMILIES.items() if f.long_output}
    assert long == {"count_up", "count_down", "day_list", "month_list"}
    assert min(mean_words[n] for n in long) > 3 * max(m for n, m in mean_words.items() if n not in long), mean_words


def test_small_domain_families_have_enough_unique_rows():
    # Templates x domain x decorations must leave room for disjoint train/held-out/test splits.
    rows = generate_rows(len(FAMILIES) * 3000, seed=9)
    for name in FAMILIES:
        unique = {(r["instruction"], r["input"]) for r in rows if r["family"] == name}
        assert len(unique) >= 1200, (name, len(unique))


@pytest.mark.parametrize(
    "n, words",
    [(0, "zero"), (13, "thirteen"), (40, "forty"), (101, "one hundred one"), (9999, "nine thousand nine hundred ninety-nine")],
)
def test_spell_number(n, words):
    assert spell_number(n) == words


def test_vocabulary_is_small_and_lowercase():
    assert 150 <= len(WORDS) <= 250
    assert len(set(WORDS)) == len(WORDS)
    assert all(w.isalpha() and w.islower() for w in WORDS)


def test_unknown_family_and_negative_n_are_value_errors():
    with pytest.raises(ValueError, match="choose from"):
        generate_rows(3, seed=0, families=["nope"])
    with pytest.raises(ValueError, match="n must be"):
        generate_rows(-1, seed=0)
    assert {r["family"] for r in generate_rows(10, seed=0, families=["add", "spell"])} == {"add", "spell"}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_demo_dataset_splits_are_correct_disjoint_and_reproducible(tmp_path):
    paths = build_demo_dataset(tmp_path / "a", n_train=600, n_heldout=120, n_test=120, seed=5)
    again = build_demo_dataset(tmp_path / "b", n_train=600, n_heldout=120, n_test=120, seed=5)
    assert set(paths) == {"train", "heldout", "test"}
    for name in ("train", "heldout", "test", "manifest"):
        file = f"{name}.json" if name == "manifest" else f"{name}.jsonl"
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    assert again["train"].name == "train.jsonl"

    splits = {name: read_jsonl(path) for name, path in paths.items()}
    assert {name: len(rows) for name, rows in splits.items()} == {"train": 600, "heldout": 120, "test": 120}
    keys = {name: [(r["instruction"], r["input"]) for r in rows] for name, rows in splits.items()}
    for name, pairs in keys.items():
        assert len(set(pairs)) == len(pairs), f"duplicates within {name}"
    assert not set(keys["train"]) & set(keys["heldout"])
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["heldout"]) & set(keys["test"])

    for name, rows in splits.items():
        assert {r["family"] for r in rows} == set(FAMILIES)
        for r in rows:
            assert r["output"] == FAMILIES[r["family"]].answer(r["instruction"], r["input"])
    assert all(set(r) == {"instruction", "input", "output", "family"} for r in splits["train"] + splits["heldout"])
    assert all(r["answer"] == r["output"] for r in splits["test"])

    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 5
    assert manifest["counts"] == {"train": 600, "heldout": 120, "test": 120}
    assert manifest["families"] == list(FAMILIES)


def test_default_demo_sizes_build_without_exhausting_a_family(tmp_path):
    from sft.core.config import DemoConfig

    demo = DemoConfig()
    paths = build_demo_dataset(tmp_path, demo.n_train, demo.n_heldout, demo.n_test, seed=demo.data_seed)
    test = read_jsonl(paths["test"])
    assert len(test) == demo.n_test and {r["family"] for r in test} == set(FAMILIES)


def test_demo_dataset_seed_changes_the_files(tmp_path):
    a = build_demo_dataset(tmp_path / "a", 50, 10, 10, seed=0)
    b = build_demo_dataset(tmp_path / "b", 50, 10, 10, seed=1)
    assert a["train"].read_bytes() != b["train"].read_bytes()


# ---------------------------------------------------------------- splits by fact


def test_held_out_and_unseen_test_facts_are_in_no_training_row(tmp_path):
    from sft.studies.facts import fact_key

    build_demo_dataset(tmp_path, n_train=800, n_heldout=96, n_test=160, seed=3, n_test_seen=48)
    rows = {s: [json.loads(line) for line in (tmp_path / f"{s}.jsonl").read_text().splitlines()]
            for s in ("train", "heldout", "test")}
    trained = {fact_key(r) for r in rows["train"]}
    unseen = [r for r in rows["test"] if r["facts"] == "unseen"]
    seen = [r for r in rows["test"] if r["facts"] == "seen"]
    assert len(unseen) == 160 and len(seen) == 48
    assert not trained & {fact_key(r) for r in rows["heldout"] + unseen}  # no fine-tuning row holds their fact
    assert {fact_key(r) for r in seen} <= trained  # the second group: a trained fact, reworded
    pairs = [(r["instruction"], r["input"]) for s in rows.values() for r in s]
    assert len(pairs) == len(set(pairs))  # and no (instruction, input) repeats anywhere
    facts = json.loads((tmp_path / "manifest.json").read_text())["facts"]
    assert facts["train_overlap"] == {"heldout": 0, "test_unseen": 0, "test_seen": len({fact_key(r) for r in seen})}


def test_a_fact_key_ignores_the_phrasing():
    from sft.studies.facts import fact_key

    a = {"family": "add", "instruction": "What is 3 + 4?", "input": "", "output": "7"}
    b = {"family": "add", "instruction": "Quick task: Add 4 and 3. Be brief.", "input": "", "output": "7"}
    c = {"family": "capital", "instruction": "Peru has which city as its capital?", "input": "", "output": "Lima"}
    assert fact_key(a) == fact_key(b) == "add:[3,4]" and fact_key(c) == 'capital:"Peru"'
