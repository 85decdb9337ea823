"""How fast the command line answers: `--help` of every command and `inspect-data` on 10 rows, beside `import torch`.

    python bench/cli_startup.py [--repeats 5] [--tokenizer ../shared/tokenizers/qwen2.5]

Each command runs in a fresh interpreter (as a user types it), interleaved with `python -c "import torch"` in every
round so that both see the same load; the median of the rounds is reported, and its ratio to torch's import.
The command line imports a command's module only when that command runs (sft/cli/main.py, `run_command`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("inspect-data", "train", "plan", "evaluate", "compare", "sweep", "demo", "build-demo", "reference-check",
            "pages")


def timed(argv: list[str]) -> float:
    """Wall seconds of one command in a fresh interpreter; a failure stops the benchmark with its output."""
    t = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"`{' '.join(argv)}` failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def cases(data: Path, tokenizer: str) -> dict[str, list[str]]:
    """Label -> command line."""
    py = sys.executable
    out = {"import torch": [py, "-c", "import torch"], "sft --help": [py, "-m", "sft", "--help"]}
    out |= {f"sft {c} --help": [py, "-m", "sft", c, "--help"] for c in COMMANDS}
    out["sft inspect-data (10 rows)"] = [py, "-m", "sft", "inspect-data", "--data", str(data), "--tokenizer", tokenizer,
                                         "--cache-dir", str(data.parent / "cache")]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the median is reported")
    parser.add_argument("--tokenizer", default=str(ROOT.parent / "shared/tokenizers/qwen2.5"))
    args = parser.parse_args()
    if not Path(args.tokenizer).exists():
        sys.exit(f"{args.tokenizer} is absent: pass --tokenizer FOLDER (e.g. model/demo/base after `make demo`).")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "ten.jsonl"
        data.write_text("".join(json.dumps({"instruction": f"Add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1)})
                                + "\n" for i in range(10)))
        runs = cases(data, args.tokenizer)
        times: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.repeats):
            for label, argv in runs.items():
                times[label].append(timed(argv))
    torch_s = statistics.median(times["import torch"])
    print(f"{'command':34} {'median s':>9} {'x import torch':>15}   ({args.repeats} rounds, {sys.platform})")
    for label, values in times.items():
        med = statistics.median(values)
        print(f"{label:34} {med:9.2f} {med / torch_s:15.2f}")
    inspect = statistics.median(times["sft inspect-data (10 rows)"])
    print(f"\ninspect-data on 10 rows takes {inspect - torch_s:+.2f} s beside import torch (target: under +3 s); "
          f"the slowest --help is {max(statistics.median(v) for k, v in times.items() if 'help' in k) / torch_s:.2f}x "
          "import torch (target: well under 1).")


if __name__ == "__main__":
    main()
