import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sft.studies.tiny_model import EOS_TOKEN, TinyModelConfig, build_base_model, ensure_demo_base, train_tokenizer
from sft.core.prompts import render_prompt
from sft.studies.synthetic import build_demo_dataset, generate_rows

SMALL = TinyModelConfig(
    vocab_size=384,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=64,
    max_position_embeddings=128,
)  # a model small enough to build in well under a second
SAMPLES = [
    "Below is an instruction.\n\n### Response:\nthree hundred forty-seven",
    "Sort: apple, dog, 12, 7 <|im_start|>user\nhi<|im_end|>",
    "caf\u00e9 na\u00efve \u00fcber \U0001f600  two  spaces\ttab",
]  # decode round-trip texts: template text, list, specials, accents, emoji, odd whitespace


def corpus_texts(n=300, seed=0):
    return [render_prompt("alpaca", r["instruction"], r["input"]) + r["output"] for r in generate_rows(n, seed)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(corpus_texts(), SMALL.vocab_size, out, model_max_length=SMALL.max_position_embeddings)
    return out


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    return AutoTokenizer.from_pretrained(tok_dir)


def test_eos_is_pad_is_endoftext_and_no_bos(tokenizer):
    assert tokenizer.eos_token == tokenizer.pad_token == EOS_TOKEN
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    assert tokenizer.bos_token is None
    assert tokenizer.padding_side == "right"
    assert tokenizer.model_max_length == SMALL.max_position_embeddings
    assert len(tokenizer) <= SMALL.vocab_size


def test_encode_adds_no_special_tokens(tokenizer):
    ids = tokenizer("hi")["input_ids"]
    assert ids == tokenizer("hi", add_special_tokens=False)["input_ids"]
    assert not set(ids) & set(tokenizer.all_special_ids)
    assert tokenizer(EOS_TOKEN)["input_ids"] == [tokenizer.eos_token_id]  # specials in text stay one token


def test_decode_round_trips(tokenizer):
    for text in SAMPLES:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_auto_tokenizer_matches_the_trained_one(tmp_path, tok_dir, tokenizer):
    trained = train_tokenizer(corpus_texts(), SMALL.vocab_size, tmp_path)
    for text in SAMPLES + corpus_texts(20, seed=9):
        assert tokenizer(text)["input_ids"] == trained(text)["input_ids"]


def test_tokenizer_is_deterministic(tmp_path, tok_dir):
    train_tokenizer(corpus_texts(), SMALL.vocab_size, tmp_path, model_max_length=SMALL.max_position_embeddings)
    assert (tmp_path / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()


def test_numbers_split_into_digits(tokenizer):
    assert tokenizer.convert_ids_to_tokens(tokenizer("347")["input_ids"]) == ["3", "4", "7"]


def test_model_round_trips_through_safetensors(tmp_path, tokenizer):
    out = build_base_model(SMALL, tokenizer, tmp_path / "m", corpus_fingerprint="abc")
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    loaded_tok = AutoTokenizer.from_pretrained(out)
    ids = loaded_tok("What is 12 + 30?", return_tensors="pt")["input_ids"]
    assert ids.tolist() == tokenizer("What is 12 + 30?", return_tensors="pt")["input_ids"].tolist()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SMALL.seed)
        from transformers import Qwen2ForCausalLM

        fresh = Qwen2ForCausalLM(model.config).eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fresh(ids).logits)  # same seed => same init, saved losslessly

    cfg = model.config
    eos = tokenizer.eos_token_id
    assert cfg.eos_token_id == cfg.pad_token_id == cfg.bos_token_id == eos
    assert cfg.use_cache and cfg.tie_word_embeddings and cfg.vocab_size == SMALL.vocab_size
    assert model.generation_config.eos_token_id == eos
    info = json.loads((out / "build_info.json").read_text())
    assert info["config"]["hidden_size"] == SMALL.hidden_size and len(info["fingerprint"]) == 64


def test_build_leaves_the_global_torch_rng_alone(tmp_path, tokenizer):
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    build_base_model(SMALL, tokenizer, tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_build_refuses_a_tokenizer_larger_than_the_vocab(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="raise vocab_size"):
        build_base_model(replace(SMALL, vocab_size=len(tokenizer) - 1), tokenizer, tmp_path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"vocab_size": 100}, "too small"),
        ({"hidden_size": 30}, "divisible"),
        ({"num_key_value_heads": 3, "num_attention_heads": 4}, "divisible"),
    ],
)
def test_config_rejects_bad_shapes(changes, message):
    with pytest.raises(ValueError, match=message):
        TinyModelConfig(**changes)


def test_ensure_demo_base_reuses_and_rebuilds(tmp_path):
    paths = build_demo_dataset(tmp_path / "data", n_train=200, n_heldout=10, n_test=10)
    out = tmp_path / "base"
    assert ensure_demo_base(out, paths["train"], SMALL) == out
    weights = out / "model.safetensors"
    first = weights.stat().st_mtime_ns
    fp = json.loads((out / "build_info.json").read_text())["fingerprint"]

    ensure_demo_base(out, paths["train"], SMALL)
    assert weights.stat().st_mtime_ns == first  # reused, not rewritten

    bigger = replace(SMALL, num_hidden_layers=3)
    ensure_demo_base(out, paths["train"], bigger)
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 3
    fp_bigger = json.loads((out / "build_info.json").read_text())["fingerprint"]
    assert fp_bigger != fp

    with paths["train"].open("a", encoding="utf-8") as f:  # a changed corpus also triggers a rebuild
        f.write(json.dumps({"instruction": "Say hi.", "input": "", "output": "hi", "family": "x"}) + "\n")
    ensure_demo_base(out, paths["train"], bigger)
    assert json.loads((out / "build_info.json").read_text())["fingerprint"] != fp_bigger
    assert not list(tmp_path.glob(".base*"))  # the staging folder is gone


def test_ensure_demo_base_refuses_a_foreign_folder(tmp_path):
    paths = build_demo_dataset(tmp_path / "data", n_train=50, n_heldout=5, n_test=5)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="empty or new folder"):
        ensure_demo_base(tmp_path / "mine", paths["train"], SMALL)
    assert (tmp_path / "mine" / "notes.txt").exists()
