"""The project's loss masks against TRL's SFTTrainer, token for token (issue #28), with the Qwen2.5 tokenizer.

* GSM8K rows as prompt-completion: w = 0 against `completion_only_loss` (TRL's default for such rows).
* Conversations chained from GSM8K rows: assistant-only (w = 0) against `assistant_only_loss`, through TRL's own
  training version of Qwen2.5's chat template. TRL's `{% generation %}` block also holds the newline after
  `<|im_start|>assistant` and the one after `<|im_end|>`; the project counts those as the template's markup. The
  test holds the masks equal but for exactly those two tokens of every reply.

TRL is a bench dependency (bench/requirements.txt) and a test one (requirements.txt); the test skips, saying
so, where it is absent.
"""

import json

import numpy as np
import pytest

from helpers import tiny_qwen25, tokenize_batch
from sft.data.config import DataConfig
from sft.core.prompts import ALPACA

trl = pytest.importorskip("trl", reason="TRL is not installed: pip install -r bench/requirements.txt (trl==1.16.0)")

N = 120


def _rows(path):
    return json.loads(path.read_text())[:N]


def _trl_labels(tokenizer, records, tmp_path, **config):
    """TRL's labels for each record, from SFTTrainer's own dataset preparation."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_length=None, report_to=[], use_cpu=True, **config)
    trainer = SFTTrainer(model=tiny_qwen25(tokenizer), args=args, processing_class=tokenizer,
                         train_dataset=datasets.Dataset.from_list(records))
    ds = trainer.train_dataset
    return ds["input_ids"], ds["labels"]


def test_masked_equals_trl_completion_only_loss_on_gsm8k(qwen_tokenizer, gsm8k_path, tmp_path):
    rows = _rows(gsm8k_path)
    records = [{"prompt": ALPACA.render(r["instruction"], r.get("input")), "completion": r["output"]} for r in rows]
    trl_ids, trl_labels = _trl_labels(qwen_tokenizer, records, tmp_path, completion_only_loss=True)
    batch = {k: [r.get(k, "") for r in rows] for k in ("instruction", "input", "output")}
    ours = tokenize_batch(batch, qwen_tokenizer, DataConfig(max_length=4096, prompt_loss_weight=0.0)).to_pydict()
    assert ours["input_ids"] == trl_ids  # prompt and response tokenized apart: no merge crosses the boundary here
    assert ours["labels"] == trl_labels  # -100 on every prompt token, the response and EOS trained


def _conversations(rows):
    convs = []
    for k in range(0, len(rows) - 1, 2):
        a, b = rows[k], rows[k + 1]
        conv = [{"role": "user", "content": a["instruction"]}, {"role": "assistant", "content": a["output"]},
                {"role": "user", "content": b["instruction"]}, {"role": "assistant", "content": b["output"]}]
        if k % 3 == 0:
            conv = [{"role": "system", "content": "You solve grade-school maths problems."}] + conv
        convs.append(conv)
    return convs


def test_assistant_only_equals_trl_assistant_only_loss_on_conversations(qwen_tokenizer, gsm8k_path, tmp_path):
    convs = _conversations(_rows(gsm8k_path))
    trl_ids, trl_labels = _trl_labels(qwen_tokenizer, [{"messages": c} for c in convs], tmp_path,
                                      assistant_only_loss=True)
    ours = tokenize_batch({"messages": convs}, qwen_tokenizer, DataConfig(max_length=8192)).to_pydict()
    assert ours["input_ids"] == trl_ids
    newline = qwen_tokenizer.convert_tokens_to_ids("Ċ")
    compared = 0
    for ids, labels, theirs in zip(ours["input_ids"], ours["labels"], trl_labels):
        ids, mine, theirs = np.asarray(ids), np.asarray(labels) != -100, np.asarray(theirs) != -100
        # TRL's extra tokens: the newline before each reply and the one after its <|im_end|>
        starts = np.flatnonzero(mine & ~np.r_[False, mine[:-1]])
        ends = np.flatnonzero(mine & ~np.r_[mine[1:], False])
        extra = np.zeros_like(mine)
        extra[starts - 1] = True
        extra[ends + 1] = True
        assert (ids[extra] == newline).all()
        assert (theirs == (mine | extra)).all()
        compared += len(ids)
    assert compared > 10_000
