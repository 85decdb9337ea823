"""The offline demo: synthetic data and a tiny base model built here, then the whole study."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import papermill
from filelock import FileLock

from sft.core.config import DemoConfig, ExperimentConfig
from sft.core.overrides import load_config
from sft.core.train import train
from sft.data.errors import UserError
from sft.evaluation.compare import compare
from sft.evaluation.evaluate import evaluate_models
from sft.runs.layout import run_dir
from sft.studies import corpus, dialogues, facts, long_families, prose, short_families, synthetic, tools, vocab
from sft.studies.pretrain import ensure_pretrained_base
from sft.studies.synthetic import generate_rows
from sft.studies.tasks import DEMO_GROUP, SEEN_GROUP, STUDY_TASKS
from sft.studies.tiny_model import TinyModelConfig, ensure_demo_base

NOTEBOOKS = {"masked": "finetune_masked.ipynb", "unmasked": "finetune_unmasked.ipynb"}  # run name -> notebook


def tiny_model_config(demo: DemoConfig):
    """The TinyModelConfig of a demo config."""
    return TinyModelConfig(
        vocab_size=demo.vocab_size,
        hidden_size=demo.hidden_size,
        num_hidden_layers=demo.num_hidden_layers,
        num_attention_heads=demo.num_attention_heads,
        num_key_value_heads=demo.num_key_value_heads,
        intermediate_size=demo.intermediate_size,
        seed=demo.model_seed,
    )


GENERATORS = [synthetic, vocab, short_families, long_families, facts]  # the demo families' code: editing it rebuilds the data
BASES = ("pretrained", "random")  # DemoConfig.base: the corpus-pretrained base (the default), or its random init


def ensure_splits(out: str | Path, wanted: dict[str, int], seed: int, sources: list, build,
                  also: dict | None = None) -> dict[str, Path]:
    """Write train/heldout/test splits to `out` with build(out, n_train, n_heldout, n_test, seed=seed), unless the
    same ones are already there: same seed, counts and generator (the source of the `sources` modules), and the
    manifest's entries `also` (the tool-use rows' counts)."""
    out = Path(out)
    paths = {name: out / f"{name}.jsonl" for name in wanted}
    manifest = out / "manifest.json"
    # The generators' own source is part of the key: editing a task family or a dialogue kind rebuilds the data.
    generator = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in sources)).hexdigest()[:16]
    if manifest.is_file() and all(p.is_file() for p in paths.values()):
        m = json.loads(manifest.read_text())
        if (m.get("seed") == seed and m.get("counts") == wanted and m.get("generator") == generator
                and all(m.get(k) == v for k, v in (also or {}).items())):
            return paths
    built = build(out, *wanted.values(), seed=seed)
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "generator": generator}, indent=2) + "\n")
    return built


def ensure_demo_dataset(demo: DemoConfig) -> dict[str, Path]:
    """Write the synthetic splits to demo.dataset_dir unless the same ones are already there (the test split: the
    unseen-fact rows, then the seen-fact ones)."""
    n_seen = demo.n_test_seen if demo.split_by_fact else 0
    wanted = {"train": demo.n_train, "heldout": demo.n_heldout, "test": demo.n_test + n_seen}

    def build(out, n_train, n_heldout, n_test, seed):
        return synthetic.build_demo_dataset(out, n_train, n_heldout, demo.n_test, seed=seed, n_test_seen=n_seen,
                                            by_fact=demo.split_by_fact)

    return ensure_splits(demo.dataset_dir, wanted, demo.data_seed, GENERATORS, build,
                         also={"split_by_fact": demo.split_by_fact, "test_seen": n_seen})


def ensure_corpus(demo: DemoConfig, paths: dict[str, Path]) -> dict[str, Path]:
    """Write the pretraining corpus to <dataset_dir>/corpus from the splits (every fact they ask about) unless the
    same one is there: same splits, corpus seed and corpus code."""
    out = Path(demo.dataset_dir) / "corpus"
    key = hashlib.sha256(b"".join([*(p.read_bytes() for p in paths.values()), *(Path(m.__file__).read_bytes() for m in (corpus, prose)),
                                   str(demo.corpus_seed).encode()])).hexdigest()[:16]
    manifest = out / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("source") == key:
        return {name: out / f"{name}.jsonl" for name in ("train", "heldout")}
    rows = [json.loads(line) for p in paths.values() for line in p.read_text(encoding="utf-8").splitlines() if line]
    built = corpus.build_corpus(out, rows, demo.corpus_seed)
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "source": key}, indent=2) + "\n")
    return built


def ensure_dialogue_dataset(demo: DemoConfig) -> dict[str, Path]:
    """Write the synthetic dialogue splits, the tool-use conversations among them, to demo.dialogue_dir unless the
    same ones are already there."""
    dialogue = {"train": demo.n_dialogue_train, "heldout": demo.n_dialogue_heldout, "test": demo.n_dialogue_test}
    tool = {"train": demo.n_tool_train, "heldout": demo.n_tool_heldout, "test": demo.n_tool_test}

    def build(out, n_train, n_heldout, n_test, seed):
        dialogues.build_dialogue_dataset(out, *dialogue.values(), seed=seed)
        return tools.add_tool_conversations(out, *tool.values(), seed=seed)

    return ensure_splits(demo.dialogue_dir, {k: n + tool[k] for k, n in dialogue.items()}, demo.data_seed,
                         [*GENERATORS, dialogues, tools], build, also={"tool_counts": tool})


def ensure_demo_assets(demo: DemoConfig) -> Path:
    """Build (or reuse) the demo data (and its dialogues, for demo-chat) and base model; return the base folder.

    Under a file lock: two notebooks started at once, or the ranks of a torchrun job, build them once.
    """
    Path(demo.dataset_dir).parent.mkdir(parents=True, exist_ok=True)
    if demo.base not in BASES:
        raise UserError(f"--demo.base must be one of {', '.join(BASES)}, got {demo.base!r}: pretrained = the tiny "
                        "model's random init pretrained on the demo's plain-text corpus (the default), random = that "
                        "init untrained.")
    with FileLock(f"{Path(demo.dataset_dir)}.lock"):
        paths = ensure_demo_dataset(demo)
        if demo.dialogues:
            ensure_dialogue_dataset(demo)
        if demo.base == "pretrained":
            return ensure_pretrained_base(demo, tiny_model_config(demo), ensure_corpus(demo, paths), paths)
        # the random init of the by-fact world shares the pretrained base's tokenizer (corpus included): comparable
        texts = ensure_corpus(demo, paths) if demo.split_by_fact else None
        corpus_texts = [json.loads(line)["text"] for line in texts["train"].read_text(encoding="utf-8").splitlines()
                        ] if texts else []
        return ensure_demo_base(demo.base_dir, paths["train"], tiny_model_config(demo), extra_texts=corpus_texts)


def ensure_assets(cfg: ExperimentConfig) -> None:
    """What every entry point calls before training: the demo preset builds its data and base model here."""
    if cfg.demo is not None:
        ensure_demo_assets(cfg.demo)


def run_notebook(notebook: str, folder: Path, parameters: dict) -> Path:
    """Execute a notebook with papermill; the executed copy goes into the run folder, not over the original."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / notebook.replace(".ipynb", ".executed.ipynb")
    papermill.execute_notebook(notebook, str(out), parameters=parameters, kernel_name="python3", log_output=False,
                               progress_bar=True)
    return out


def run_demo(steps: tuple[str, ...] = ("train", "evaluate", "case-study"), overrides: dict | None = None) -> None:
    """The whole offline study: build, fine-tune masked and unmasked (notebooks), evaluate, compare."""
    overrides = dict(overrides or {})
    cfg = load_config("demo", **overrides)
    t0 = time.perf_counter()
    ensure_demo_assets(cfg.demo)
    # `make demo` rebuilds the study: both runs train again from the start (overwrite), unless told to resume;
    # the notebooks' own default (resume "auto", no overwrite) never deletes a run's checkpoints.
    switches = {"resume": overrides.pop("resume", "auto")}
    switches["overwrite"] = overrides.pop("overwrite", switches["resume"] == "auto")
    runs = {}
    for run, notebook in NOTEBOOKS.items():
        name = run if cfg.lora is None else f"{'qlora' if cfg.lora.qlora else 'lora'}-{run}"  # never the full runs'
        runs[name] = run_dir(load_config("demo", run_name=name, **overrides))
        if "train" in steps:
            t = time.perf_counter()
            out = run_notebook(notebook, runs[name], {"overrides": overrides, "run_name": name, **switches})
            print(f"[demo] {notebook}: {time.perf_counter() - t:.0f} s, executed copy in {out}", flush=True)
    if "evaluate" in steps:
        t = time.perf_counter()
        models = {"base": cfg.demo.base_dir, **{run: str(path) for run, path in runs.items()}}
        # the unseen-fact test (sft_demo, the study's endpoint) and the seen-fact group beside it where the data has it
        seen = cfg.demo.split_by_fact and cfg.demo.n_test_seen > 0
        result = evaluate_models(models, STUDY_TASKS, name="demo", **({"tasks": [DEMO_GROUP, SEEN_GROUP]} if seen else {}))
        print(compare([result], out=result), flush=True)
        print(base_gate(cfg.demo.base_dir, Path(result)), flush=True)
        print(f"[demo] evaluation and comparison: {time.perf_counter() - t:.0f} s, results, plot and spreadsheet in "
              f"{result} (git-ignored; `python -m sft publish {result}` commits what the pages cite)", flush=True)
    print(f"[demo] done in {time.perf_counter() - t0:.0f} s", flush=True)


def base_gate(base_dir: str | Path, result: Path) -> str:
    """The base's gate figures (build_info.json: how it was made, its held-out corpus loss, its loss on the SFT
    prompts against ln V), copied into the result folder as base.json; one paragraph for the console. Its test
    scores are the summary's `base` column."""
    info = json.loads((Path(base_dir) / "build_info.json").read_text(encoding="utf-8"))
    figures = {k: info[k] for k in ("config", "pretraining", "gate", "weights_sha256") if k in info}
    (result / "base.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return gate_line(base_dir)


def gate_line(base_dir: str | Path) -> str:
    """One paragraph of the base's gate figures from its build_info.json (build-demo and demo print it)."""
    info = json.loads((Path(base_dir) / "build_info.json").read_text(encoding="utf-8"))
    if "pretraining" not in info:
        return "[demo] base: the random init (--demo.base random), not pretrained"
    p, g = info["pretraining"], info["gate"]
    return (f"[demo] base: pretrained on {p['corpus_tokens']['train']:,} corpus tokens x {p['epochs']:g} epochs "
            f"({p['steps']} steps, {p['wall_seconds']:.0f} s wall, {p['cpu_seconds']:.0f} s CPU); held-out corpus loss "
            f"{p['heldout_corpus_loss']:.3f}; on the SFT held-out rows (ln V = {g['ln_vocab']:.3f}) prompt "
            f"{g['base']['prompt_loss']:.3f} ({g['prompt_loss_below_ln_vocab']:+.3f} below ln V; random init "
            f"{g['random_init']['prompt_loss']:.3f}): user words {g['base']['user_loss']:.3f} "
            f"({g['user_loss_below_ln_vocab']:+.3f} below), template {g['base']['template_loss']:.3f}, response "
            f"{g['base']['response_loss']:.3f}; its test scores: the base column above")


CHAT_WEIGHTS = (0.0, 0.5, 1.0)  # the conversational study's prompt-loss weights: masked, in between, unmasked


def run_demo_chat(overrides: dict | None = None) -> Path:
    """The conversational study: fine-tune the demo's base on dialogues at w = 0, 0.5, 1, evaluate, compare."""
    overrides = dict(overrides or {})
    overrides.setdefault("overwrite", overrides.get("resume", "auto") == "auto")  # rebuild the study, as run_demo
    t0 = time.perf_counter()
    runs = {}
    for w in CHAT_WEIGHTS:
        cfg = load_config("demo-chat", **{**overrides, "prompt_loss_weight": w})
        ensure_assets(cfg)
        t = time.perf_counter()
        train(cfg)
        runs[cfg.train.run_name] = str(run_dir(cfg))
        print(f"[demo-chat] {cfg.train.run_name} (w = {w:g}): {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    result = evaluate_models({"base": cfg.demo.base_dir, **runs}, STUDY_TASKS, name="demo-chat")
    print(compare([result], out=result), flush=True)
    print(f"[demo-chat] evaluation and comparison: {time.perf_counter() - t:.0f} s, results, plot and spreadsheet in "
          f"{result} (git-ignored; `python -m sft publish {result}` commits what the pages cite)", flush=True)
    print(f"[demo-chat] done in {time.perf_counter() - t0:.0f} s", flush=True)
    return result
# One prompt each: four short-answer families and the four long-output ones.
BUILTIN_FAMILIES = ("add", "count", "extract", "capital", "count_up", "count_down", "day_list", "month_list")
BUILTIN_SEED = 2024  # the built-in prompts are drawn from sft.studies.synthetic with this seed: the same every time


# ---------------------------------------------------------------- inputs


def builtin_prompts() -> list[dict[str, str]]:
    """Eight demo prompts, one per synthetic task family, with the reference answer as `output`."""
    rows = generate_rows(len(BUILTIN_FAMILIES), seed=BUILTIN_SEED, families=BUILTIN_FAMILIES)
    return [{k: r[k] for k in ("instruction", "input", "output", "family")} for r in rows]
