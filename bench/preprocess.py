"""Preprocessing speed: rows -> weighted token examples, cold (no cache) and warm (cached), in one run.

    python bench/preprocess.py [--data ../shared/data/gsm8k_alpaca.json] [--tokenizer ../shared/tokenizers/qwen2.5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sft.data.config import DataConfig
from sft.data.rows import load_rows
from sft.core.prepare import tokenize_rows
from sft.models.tokenizer import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/gsm8k_alpaca.json"))
    parser.add_argument("--tokenizer", default=str(ROOT.parent / "shared/tokenizers/qwen2.5"))
    parser.add_argument("--repeats", type=int, default=3, help="cold runs; the best is reported")
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"{args.data} is absent: this benchmark needs the project's ../shared folder beside the repo.")
    tokenizer = load_tokenizer(args.tokenizer)
    start = time.perf_counter()
    rows, _ = load_rows(args.data)
    load_s = time.perf_counter() - start
    cold = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = DataConfig(cache_dir=tmp)
            start = time.perf_counter()
            tokenize_rows(rows, tokenizer, cfg)
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            tokenize_rows(rows, tokenizer, cfg)
            warm = time.perf_counter() - start
    best = min(cold)
    print(f"{len(rows)} rows: load+validate {load_s:.2f} s; tokenize+weight {best:.2f} s "
          f"= {len(rows) / best:,.0f} examples/s (best of {args.repeats}); from the cache {warm:.2f} s")


if __name__ == "__main__":
    main()
