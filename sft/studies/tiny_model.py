"""The tiny Qwen2-style base model and byte-level BPE tokenizer that the offline demo builds for itself."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import tokenizers
import torch
import transformers
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from sft.core.prompts import render_prompt
from sft.data.errors import UserError
from sft.models.checks import check_base_weights, weights_sha256
from sft.runs.layout import BUILD_INFO

EOS_TOKEN = "<|endoftext|>"  # end of text; also the pad token, as in Qwen2.5 (the eos == pad pitfall)
SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, "<|im_start|>", "<|im_end|>")  # Qwen2.5's first three specials, ids 0..2 here
BYTE_ALPHABET_SIZE = 256  # byte-level BPE starts from one token per byte, so any text is encodable
# Qwen2's pre-tokenizer split: letters with one leading non-letter, single digits (so every number
# is spelled digit by digit, which helps arithmetic), punctuation runs, newlines, and spaces.
QWEN2_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CORPUS_TEMPLATE = "alpaca"  # the tokenizer is trained on prompts rendered with this template plus outputs
BUILD_VERSION = 1  # bump when the build recipe changes, so ensure_demo_base rebuilds old folders


@dataclass(frozen=True)
class TinyModelConfig:
    """Size and seed of the tiny Qwen2-style base model."""

    vocab_size: int = 1280  # measured: smallest multiple of 128 making every WORDS entry one token; ~58 tokens/row
    hidden_size: int = 128  # model width
    num_hidden_layers: int = 4  # transformer blocks
    num_attention_heads: int = 4  # query heads; head_dim = hidden_size / heads = 32
    num_key_value_heads: int = 2  # grouped-query attention, as in Qwen2.5 (2 query heads share one kv head)
    intermediate_size: int = 512  # SwiGLU hidden width, 4x the model width
    max_position_embeddings: int = 512  # longest sequence; the longest demo row is ~165 tokens with the Alpaca prompt
    rope_theta: float = 10000.0  # RoPE base; short sequences need no long-context base
    tie_word_embeddings: bool = True  # share input and output embeddings, as Qwen2.5-0.5B does
    seed: int = 0  # torch seed for the random initialisation

    def __post_init__(self) -> None:
        """Reject shapes Qwen2 cannot build, with the fix in the message."""
        if self.vocab_size < len(SPECIAL_TOKENS) + BYTE_ALPHABET_SIZE:
            raise UserError(
                f"vocab_size={self.vocab_size} is too small; use at least {len(SPECIAL_TOKENS) + BYTE_ALPHABET_SIZE} "
                "(special tokens + 256 bytes)"
            )
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"hidden_size={self.hidden_size} must be divisible by num_attention_heads={self.num_attention_heads}"
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise UserError("hidden_size / num_attention_heads must be even for RoPE; change either value")
        if self.num_attention_heads % self.num_key_value_heads:
            raise UserError(
                f"num_attention_heads={self.num_attention_heads} must be divisible by "
                f"num_key_value_heads={self.num_key_value_heads}"
            )


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | Path, *, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """Train a Qwen2-style byte-level BPE on texts and save it as a transformers tokenizer in out_dir."""
    corpus = list(texts)
    if not corpus:
        raise UserError("train_tokenizer got no texts; pass the rendered training prompts and outputs")
    if vocab_size < len(SPECIAL_TOKENS) + BYTE_ALPHABET_SIZE:
        minimum = len(SPECIAL_TOKENS) + BYTE_ALPHABET_SIZE
        raise UserError(f"vocab_size={vocab_size} is too small; use at least {minimum}")
    backend = Tokenizer(models.BPE())
    # NFC as in Qwen2.5's tokenizer.json; AutoTokenizer loads this folder as Qwen2Tokenizer, which forces NFC,
    # so training with it keeps the saved tokenizer and the auto-loaded one identical.
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    # Byte-level offsets only; like Qwen2.5, nothing (no BOS, no EOS) is added around encoded text.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        padding_side="right",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def fingerprint(cfg: TinyModelConfig, corpus_fingerprint: str) -> str:
    """Hash the config, the corpus fingerprint and the build recipe version."""
    payload = json.dumps({"config": asdict(cfg), "corpus": corpus_fingerprint, "version": BUILD_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def build_base_model(
    cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, out_dir: str | Path, *, corpus_fingerprint: str = ""
) -> Path:
    """Randomly initialise a Qwen2ForCausalLM and save it with the tokenizer and build_info.json in out_dir."""
    if len(tokenizer) > cfg.vocab_size:
        raise UserError(
            f"tokenizer has {len(tokenizer)} tokens but cfg.vocab_size={cfg.vocab_size}; raise vocab_size"
        )
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise UserError(f"tokenizer has no eos token; train it with sft.studies.tiny_model.train_tokenizer ({EOS_TOKEN})")
    # Fork the RNG so building a model does not reseed the caller's torch state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Qwen2ForCausalLM(qwen2_config(cfg, eos_id))
    model.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # transformers 5 always writes safetensors (the safe_serialization flag is gone).
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    info = {
        "config": asdict(cfg),
        "corpus_fingerprint": corpus_fingerprint,
        "fingerprint": fingerprint(cfg, corpus_fingerprint),
        "build_version": BUILD_VERSION,
        "num_parameters": model.num_parameters(),
        "weights_sha256": weights_sha256(out),  # checked before every run: a base trained over is an error
        "tokenizer_size": len(tokenizer),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }
    (out / BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def qwen2_config(cfg: TinyModelConfig, eos_id: int) -> Qwen2Config:
    """The Qwen2Config of a TinyModelConfig, with Qwen2.5's special ids (all <|endoftext|>)."""
    return Qwen2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_word_embeddings,
        use_cache=True,
        # Qwen2.5 base: bos, eos and pad are all <|endoftext|>, though no BOS is ever added to inputs.
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def read_corpus_texts(corpus_path: str | Path) -> list[str]:
    """Render each train row as its Alpaca prompt followed by its output, the text the tokenizer learns from."""
    path = Path(corpus_path)
    if not path.is_file():
        raise UserError(f"corpus {path} not found; write it with sft.studies.synthetic.build_demo_dataset")
    texts = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "instruction" not in row or "output" not in row:
                raise UserError(f"{path}:{line_no} lacks instruction/output; use alpaca-schema JSONL rows")
            texts.append(render_prompt(CORPUS_TEMPLATE, row["instruction"], row.get("input") or None) + row["output"])
    if not texts:
        raise UserError(f"corpus {path} is empty; write rows with sft.studies.synthetic.build_demo_dataset")
    return texts


def fingerprint_texts(texts: Iterable[str]) -> str:
    """Hash the rendered corpus, so a changed file or a changed prompt template both trigger a rebuild."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def read_build_fingerprint(out_dir: Path) -> str | None:
    """Return the fingerprint recorded in out_dir, or None when there is no complete build there."""
    needed = (BUILD_INFO, "config.json", "model.safetensors", "tokenizer.json")
    if not all((out_dir / name).is_file() for name in needed):
        return None
    return json.loads((out_dir / BUILD_INFO).read_text(encoding="utf-8")).get("fingerprint")


def ensure_demo_base(out_dir: str | Path, corpus_path: str | Path, cfg: TinyModelConfig | None = None,
                     extra_texts: Iterable[str] = ()) -> Path:
    """Build the demo base model (randomly initialised) and tokenizer in out_dir, or reuse it when config and corpus
    are unchanged. The tokenizer learns from the training rows rendered and `extra_texts` (the pretraining corpus)."""
    cfg = cfg or TinyModelConfig()
    out = Path(out_dir)
    texts = read_corpus_texts(corpus_path) + list(extra_texts)
    corpus_fp = fingerprint_texts(texts)
    if read_build_fingerprint(out) == fingerprint(cfg, corpus_fp):
        check_base_weights(out)  # the config is the same, but are the weights still the ones built?
        info = json.loads((out / BUILD_INFO).read_text(encoding="utf-8"))
        if "weights_sha256" not in info:  # built before the weights were fingerprinted: record them now
            info["weights_sha256"] = weights_sha256(out)
            (out / BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return out
    if out.exists() and ((out / "run_manifest.json").is_file() or any(out.glob("checkpoint-*"))):
        raise UserError(f"{out} holds a training run, not only the demo base: move that run elsewhere (runs belong "
                         f"in their own folders, --run-name NAME), delete {out}, and run the command again.")
    if out.exists() and any(out.iterdir()) and not (out / BUILD_INFO).is_file():
        raise UserError(f"{out} is not empty and holds no {BUILD_INFO}; pick an empty or new folder for the demo base")
    # Build beside the target and swap in at the end, so an interrupted build never looks complete.
    staging = out.parent / f".{out.name}.building"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    tokenizer = train_tokenizer(texts, cfg.vocab_size, staging, model_max_length=cfg.max_position_embeddings)
    build_base_model(cfg, tokenizer, staging, corpus_fingerprint=corpus_fp)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out
