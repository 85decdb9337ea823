"""Experiment configuration: one dataclass per concern, named presets, and overrides.

A notebook's parameters cell and the command line override the same fields, by bare name
(`learning_rate`, `prompt_loss_weight`) or dotted name (`train.learning_rate`). A name that is
not a field here but is a `transformers.TrainingArguments` field goes to `train.extra`, so
every Trainer option stays reachable without being repeated here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft.core.values import check_train_values
from sft.data.config import DataConfig
from sft.data.errors import UserError
from sft.data.files import data_files
from sft.runs.layout import LOCAL_DATA_DIR, LOCAL_QWEN_DIR, MODEL_ROOT, TENSORBOARD_ROOT
from sft.runs.manifest import read_manifest
from sft.runs.safety import check_run_name


@dataclass
class ModelConfig:
    """The base model to fine-tune."""

    model: str = "model/demo/base"  # a local folder (save_pretrained layout) or a hub id such as Qwen/Qwen2.5-0.5B
    tokenizer: str | None = None  # None = the model's own tokenizer
    dtype: str = "auto"  # "auto": bf16 on a GPU that supports it, else fp32; or "float32" / "bfloat16" / "float16"
    attn_implementation: str | None = None  # None = transformers' default (sdpa); "flash_attention_2" on a GPU
    trust_remote_code: bool = False  # never run code from a model repo unless you ask for it


@dataclass
class TrainConfig:
    """The Trainer run: schedule, batching, logging, checkpoints (see sft/core/train.py)."""

    run_name: str | None = None  # None = "masked" (w = 0), "unmasked" (w = 1) or "plw<w>", prefixed "lora-" / "qlora-" for adapters; names the folders model/<preset>/<run>/ and tensorboard_events/<preset>/<run>_finetune_tfb/
    model_root: str = MODEL_ROOT  # checkpoints and the final model go under <model_root>/<preset>/<run_name>/
    tensorboard_root: str = TENSORBOARD_ROOT  # TensorBoard events under <tensorboard_root>/<preset>/<run>_finetune_tfb/
    num_train_epochs: float = 3.0  # passes over the training split
    max_steps: int = -1  # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 4  # examples per micro-batch per process
    per_device_eval_batch_size: int = 8  # examples per evaluation batch per process
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step (the loss is normalised over all of them)
    learning_rate: float = 2e-5  # peak learning rate of AdamW
    lr_scheduler_type: str = "cosine"  # decay after warmup
    warmup_ratio: float = 0.03  # share of the steps spent warming up linearly
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # clip each step's gradient to this norm (0: no clipping; the norm is logged either way)
    logging_steps: int = 10  # optimizer steps between training logs (loss, response_loss, prompt_loss, tokens/s)
    eval_steps: int = 100  # optimizer steps between held-out evaluations
    save_steps: int = 200  # optimizer steps between checkpoints
    save_total_limit: int | None = None  # keep at most N checkpoints (None = all; see auto_clean.py)
    auto_clean: dict[str, Any] | None = None  # prune checkpoints after each save, e.g. {"keep_last": 1, "keep_best": 1, "metric": "eval_response_loss", "strip_optimizer": true} (sft/runs/prune.py PrunePolicy; None = off)
    batching: str = "auto"  # padded | grouped (similar lengths per batch) | packed (one row, no padding) | auto = packed, on every device (the fastest in bench/throughput.py)
    selective_head: bool = True  # LM head and cross-entropy only where the loss weight is non-zero (sft/core/loss.py)
    seed: int = 42  # model init of new heads, dropout and the data order: same seed = same order in every regime
    bf16: str = "auto"  # "auto" = on where the GPU supports it; "true" / "false"
    resume: bool | str = "auto"  # "auto": continue a stopped run from its last complete checkpoint, refuse a finished one; true: continue any; false: never
    overwrite: bool = False  # start the run again, deleting its checkpoints (nothing is deleted without it)
    extra: dict[str, Any] = field(default_factory=dict)  # any other TrainingArguments field, e.g. {"optim": "adamw_torch_fused"}

    def __post_init__(self) -> None:
        resume = {"yes": "true", "1": "true", "no": "false", "0": "false"}.get(str(self.resume).lower(),
                                                                               str(self.resume).lower())
        if resume not in ("auto", "true", "false"):
            raise UserError(f"resume must be auto, true or false, got {self.resume!r}.")
        self.resume = resume
        # Read strictly: "maybe" was read as false.
        bf16 = {"yes": "true", "1": "true", "no": "false", "0": "false"}.get(str(self.bf16).lower(),
                                                                             str(self.bf16).lower())
        if bf16 not in ("auto", "true", "false"):
            raise UserError(f"bf16 must be auto, true or false, got {self.bf16!r}: e.g. --bf16 auto (on where the "
                            "GPU supports it).")
        self.bf16 = bf16
        if resume == "true" and self.overwrite:
            raise UserError("resume (continue the run) and overwrite (start it again, deleting its checkpoints) "
                             "exclude each other: set one of them.")
        check_train_values(self)


@dataclass
class DemoConfig:
    """Sizes of the offline demo: synthetic data and the tiny base model built by the project."""

    n_train: int = 8000  # synthetic training rows (500 per family); 2 epochs fit a ~2-minute budget per run on 2 CPU cores (see _demo)
    n_heldout: int = 400  # held-out rows (losses during and after training)
    n_test: int = 1600  # test rows (exact match and edit similarity): 100 per family, so per-family intervals are about +-10 points
    data_seed: int = 0  # seed of the synthetic generator
    dataset_dir: str = "Dataset/demo"  # where the synthetic splits are written
    base_dir: str = "model/demo/base"  # where the tiny base model and tokenizer are built
    vocab_size: int = 1536  # BPE vocabulary of the demo tokenizer: room for the lookup tables (capitals, weekdays, months) as single tokens
    hidden_size: int = 128  # width of the tiny Qwen2
    num_hidden_layers: int = 4  # depth
    num_attention_heads: int = 4  # query heads
    num_key_value_heads: int = 2  # grouped-query attention, as in Qwen2.5
    intermediate_size: int = 512  # MLP width
    model_seed: int = 0  # random init of the base model (before pretraining): 0 or 1 are the two studied
    split_by_fact: bool = True  # held-out and test ask about facts no training row holds (sft/studies/facts.py), plus n_test_seen rows about trained facts; false: the earlier random init studies' split (disjoint on instruction and input only)
    n_test_seen: int = 400  # with split_by_fact: test rows about facts a training row holds, reworded (25 per family), scored as group sft_demo_seen
    base: str = "pretrained"  # pretrained: the random init pretrained on the plain text corpus (sft/studies/corpus.py, sft/studies/pretrain.py) | random: that init untrained, the earlier studies' base
    corpus_seed: int = 0  # seed of the pretraining corpus's phrasings and documents, apart from data_seed
    pretrain_epochs: float = 3.0  # passes over the corpus (about 350K tokens): the first make demo stays within 10 minutes on 2 cores (docs/results.md)
    pretrain_batch_size: int = 16  # corpus documents per step (packed, as the fine-tunes' rows)
    pretrain_learning_rate: float = 3e-3  # as the fine-tunes; linear decay after 5% warmup
    dialogues: bool = False  # the demo-chat preset: fine-tune on synthetic dialogues (sft/studies/dialogues.py) from the demo's base
    dialogue_dir: str = "Dataset/demo-chat"  # where the dialogue splits are written
    n_dialogue_train: int = 2400  # training dialogues (400 per kind): 2 epochs of batch 8 (600 steps) per run, 3 runs in the demo-chat budget
    n_dialogue_heldout: int = 300  # held-out dialogues (losses during and after training)
    n_dialogue_test: int = 600  # test dialogues: 100 per kind, the last reply scored by lm-eval through the chat template
    n_tool_train: int = 320  # tool-use conversations (sft/studies/tools.py, 80 per kind) added to the training dialogues: ~350 tokens each in the alpaca chat template (the two tools' JSON schemas), 4.2 times a dialogue's, so they add ~56% to a run's tokens (demo-chat's budget)
    n_tool_heldout: int = 80  # tool-use conversations added to the held-out dialogues (20 per kind: the loss of tool_call and tool_output tokens)
    n_tool_test: int = 120  # tool-use conversations added to the test dialogues: 30 per kind, the call and the final answer scored apart


@dataclass
class LoraSettings:
    """LoRA / QLoRA adapters through peft (sft/models/lora.py). Setting any of these fields turns adapters on."""

    r: int = 8  # rank of the update B @ A added to each adapted weight
    alpha: float = 16.0  # the update is scaled by alpha / r (peft's lora_alpha)
    dropout: float = 0.0  # dropout on the adapter's input (peft's default; 0 keeps runs deterministic to compare)
    target_modules: str = "all-linear"  # "all-linear" = every linear layer but the LM head, or names: "q_proj,v_proj"
    bias: str = "none"  # which biases train besides the adapters: none | all | lora_only
    modules_to_save: str | None = None  # modules trained in full and saved with the adapter, e.g. "embed_tokens"
    qlora: bool = False  # QLoRA: the frozen base in 4-bit NF4 (bitsandbytes; a CUDA GPU only, else an error)
    merge: bool = False  # also write base + adapter merged into one full model at <run>/merged/


@dataclass
class ExperimentConfig:
    """Everything a run needs, grouped by concern."""

    preset: str = "demo"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    demo: DemoConfig | None = None  # set for the offline demo, which builds its own data and base model
    lora: LoraSettings | None = None  # None = full fine-tuning; set (e.g. --lora.r 8) to train LoRA adapters

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (saved in every run's manifest)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentConfig":
        """Rebuild a config from `to_dict()` output (e.g. a run manifest)."""
        return cls(
            preset=d["preset"],
            data=DataConfig(**d["data"]),
            model=ModelConfig(**d["model"]),
            train=TrainConfig(**d["train"]),
            demo=DemoConfig(**d["demo"]) if d.get("demo") else None,
            lora=LoraSettings(**d["lora"]) if d.get("lora") else None,
        )


# LoRA defaults of a preset, over LoraSettings', used when a run turns adapters on. The demo's base model is
# randomly initialised: under LoRA its tied embedding (the LM head) stays frozen at init scale and its final RMSNorm
# at 1, which caps how confident any prediction can get. Training that norm's 128 weights with the adapter lifts
# the cap (docs/lora.md: measured on the demo). A pretrained base such as Qwen2.5 needs no such help.
LORA_DEFAULTS: dict[str, dict[str, Any]] = {"demo": {"modules_to_save": "model.norm"}}


def _demo() -> ExperimentConfig:
    demo = DemoConfig()
    return ExperimentConfig(
        preset="demo",
        data=DataConfig(
            data=f"{demo.dataset_dir}/train.jsonl",
            eval_data=f"{demo.dataset_dir}/heldout.jsonl",
            max_length=256,
        ),
        model=ModelConfig(model=demo.base_dir, dtype="float32"),
        train=TrainConfig(
            # Measured on 2 CPU cores, 8000 rows x 2 epochs, batch 8 (2000 steps), the 16 families of sft.studies.synthetic:
            # lr 3e-3. In the committed run (docs/results-history.md) unmasked (w = 1) reaches 53.2% exact match on the 12
            # short-answer families, masked (w = 0) 19.4%; on the 4 long-output families (counting, day and month spans)
            # both learn the successor rule (edit similarity 62.9 and 38.0 against the base's 3.5) but rarely stop on the
            # right item (exact match 7.8 and 0.0). Copy tasks (sort, reverse, case) stayed at 0 in this budget and
            # were replaced.
            num_train_epochs=2.0,
            per_device_train_batch_size=8,
            per_device_eval_batch_size=32,
            learning_rate=3e-3,
            warmup_ratio=0.05,
            weight_decay=0.0,
            logging_steps=10,
            eval_steps=250,  # 8 held-out evaluations: each costs ~1 s, more would eat into the 3-minute budget
            save_steps=500,
        ),
        demo=demo,
    )


def _demo_chat() -> ExperimentConfig:
    cfg = _demo()
    demo = cfg.demo
    demo.dialogues = True
    cfg.preset = "demo-chat"
    # Rendered through the alpaca template as a chat template (the demo tokenizer has none of its own).
    cfg.data = DataConfig(data=f"{demo.dialogue_dir}/train.jsonl", eval_data=f"{demo.dialogue_dir}/heldout.jsonl",
                          max_length=512)
    # The demo's schedule (2 epochs, batch 8, lr 3e-3) on 2,400 dialogues: 600 steps, ~83 tokens per dialogue.
    cfg.train.eval_steps = 150  # 4 held-out evaluations per run
    cfg.train.save_steps = 600  # one checkpoint, at the end
    return cfg


def _qwen25_alpaca() -> ExperimentConfig:
    return ExperimentConfig(
        preset="qwen2.5-0.5b-alpaca",
        # Dataset/ when it holds a file (the original project's layout), else the hub copy; see resolve_paths().
        data=DataConfig(data="yahma/alpaca-cleaned", eval_size=0.02, max_length=512),
        # model/qwen2.5/transformers/0.5b/1 when present (a Kaggle-style download), else the hub id.
        # fp32 master weights, bf16 compute (bf16="auto" autocasts): weights loaded in bf16 would make AdamW's
        # updates at lr 2e-5 fall below bf16's resolution (~0.4% of a weight) and be rounded away.
        model=ModelConfig(model="Qwen/Qwen2.5-0.5B", dtype="float32"),
        train=TrainConfig(
            num_train_epochs=3.0,  # the reference experiment
            per_device_train_batch_size=4,  # the reference experiment
            per_device_eval_batch_size=8,
            gradient_accumulation_steps=4,  # 16 examples per optimizer step on one GPU
            learning_rate=2e-5,
            lr_scheduler_type="cosine",
            warmup_ratio=0.03,
            logging_steps=10,
            eval_steps=500,
            save_steps=1000,
            bf16="auto",
        ),
    )


PRESETS = {"demo": _demo, "demo-chat": _demo_chat, "qwen2.5-0.5b-alpaca": _qwen25_alpaca}
DEFAULT_PRESET = "demo"  # what the notebooks and every command use unless told otherwise


def resolve_local_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Prefer local copies of the reference model and data over the hub, when they exist."""
    if cfg.preset != "qwen2.5-0.5b-alpaca":
        return cfg
    # A folder there means the user downloaded into it: an incomplete one is reported by sft.models.checks, not
    # silently replaced by the hub copy.
    if cfg.model.model == "Qwen/Qwen2.5-0.5B" and Path(LOCAL_QWEN_DIR).is_dir():
        cfg.model.model = LOCAL_QWEN_DIR
    if cfg.data.data == "yahma/alpaca-cleaned":
        files = data_files(LOCAL_DATA_DIR)  # a ValueError when Dataset/ holds files but no usable one
        if files:
            cfg.data.data = str(files[0]) if len(files) == 1 else LOCAL_DATA_DIR
    return cfg


def weight_suffix(d: DataConfig) -> str:
    """'' for the plain weight settings; else what sets a run apart: -template0-user0.5, -to0, -norm-response_tokens
    -eot-none (so a run with role weights, a schedule, another normaliser or end-of-turn weight never lands in the
    plain run's folder)."""
    parts = [f"{role}{w:g}" for role, w in d.role_weights.items()]
    if d.prompt_loss_weight_end is not None:
        parts.append(f"to{d.prompt_loss_weight_end:g}")
    if d.loss_normalizer != "weight_sum":
        parts.append(f"norm-{d.loss_normalizer}")
    if d.end_of_turn != "turn":
        parts.append(f"eot-{d.end_of_turn}")
    if d.empty_reasoning != "ignore":
        parts.append(f"empty-think-{d.empty_reasoning}")
    if d.reasoning_history != "keep":
        parts.append(f"history-{d.reasoning_history}")
    return "".join(f"-{p}" for p in parts)


def check_run_folder(cfg: ExperimentConfig) -> Path:
    """The run folder of cfg, or a ValueError for a run name outside the preset's folder or on the base model."""
    bases = (cfg.model.model, cfg.demo.base_dir if cfg.demo else None)
    return check_run_name(cfg.train.run_name, Path(cfg.train.model_root) / cfg.preset, bases)


def default_run_name(prompt_loss_weight: float, lora: LoraSettings | None = None) -> str:
    """masked (w = 0), unmasked (w = 1), plw<w> in between; prefixed lora- or qlora- for adapter runs."""
    name = {0.0: "masked", 1.0: "unmasked"}.get(float(prompt_loss_weight), f"plw{prompt_loss_weight:g}")
    return name if lora is None else f"{'qlora' if lora.qlora else 'lora'}-{name}"


def load_run_config(run_dir: str | Path) -> ExperimentConfig:
    """The ExperimentConfig a run was trained with."""
    return ExperimentConfig.from_dict(read_manifest(run_dir)["config"])
