"""The raw generation of every lm-eval generation request, kept for the side effects (sft.evaluation.side_effects).

lm-eval's per-sample log holds `resps`, the text after lm-eval's own post-processing: decoded without special
tokens and cut at the first of the task's stop strings (`until`, EOS added); `filtered_resps` is that text after
the task's filters (answer extraction). Neither shows whether the model stopped, nor a ChatML `<|im_start|>` it
ran on into. `RecordingHFLM` keeps, for every request, the generated token ids as `HFLM.generate_until` decodes
them (its `tok_decode` call, followed for the same row by the cache hook's `add_partial(context, gen_kwargs)`):
cut at the first EOS or end-of-turn id of the model's generation config, the text decoded with special tokens,
and whether the row stopped (an EOS or end-of-turn id, or a stop string in the text) or ran to `max_gen_toks`.
`attach_raw` writes it into each sample as `raw_generation`, so predictions/<model>/<task>.jsonl carry it.
"""

from __future__ import annotations

import json
from typing import Any

from lm_eval.models.huggingface import HFLM

from sft.evaluation.generate import eos_ids
from sft.evaluation.side_effects import Generation

RAW = "raw_generation"  # the sample field holding a request's raw generation


def request_key(context: str, gen_kwargs: dict) -> tuple[str, str]:
    """A generation request's identity: its prompt and its generation settings."""
    return context, json.dumps(gen_kwargs, sort_keys=True, default=str)


class _RecordHook:
    """HFLM's cache hook, told (context, gen_kwargs) right after each row of generate_until is decoded."""

    def __init__(self, lm: "RecordingHFLM") -> None:
        self.lm = lm

    def add_partial(self, attr: str, req: Any, res: Any) -> None:
        if attr == "generate_until" and self.lm.last_tokens is not None:
            context, gen_kwargs = req
            self.lm.raw[request_key(context, gen_kwargs)] = self.lm.describe(self.lm.last_tokens, gen_kwargs)
        self.lm.last_tokens = None


class RecordingHFLM(HFLM):
    """lm-eval's HF model that also records each generation's raw tokens (see the module's docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.raw: dict[tuple[str, str], dict] = {}
        self.last_tokens: list[int] | None = None
        self.cache_hook = _RecordHook(self)

    def tok_decode(self, tokens, skip_special_tokens: bool = True):
        if not isinstance(tokens, int):  # generate_until's rows; an int is its EOS-string lookup
            self.last_tokens = list(tokens)
        return super().tok_decode(tokens, skip_special_tokens=skip_special_tokens)

    def describe(self, tokens: list[int], gen_kwargs: dict) -> dict:
        """{text, tokens, stopped, max_tokens} of one row's generated ids (padding after its end dropped)."""
        stop = set(eos_ids(self.model, self.tokenizer))
        end = next((i for i, t in enumerate(tokens) if t in stop), None)
        stopped = end is not None
        tokens = tokens[:end] if stopped else list(tokens)
        pad = self.tokenizer.pad_token_id
        while not stopped and tokens and tokens[-1] == pad:  # rows finished by a stop string are padded after it
            tokens.pop()
        text = self.tokenizer.decode(tokens, skip_special_tokens=False)
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else until
        stopped = stopped or any(u and u in text for u in until)
        return {"text": text, "tokens": len(tokens), "stopped": stopped,
                "max_tokens": int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))}


def attach_raw(samples: dict[str, list[dict]], raw: dict[tuple[str, str], dict]) -> int:
    """Add each generation sample's raw generation (`RAW`); return how many generation samples found none."""
    missing = 0
    for records in samples.values():
        for rec in records:
            args = rec.get("arguments") or []
            if not args or len(args[0]) != 2 or not isinstance(args[0][1], dict):
                continue  # a log-likelihood request: (context, continuation), no generation
            found = raw.get(request_key(*args[0]))
            if found is None:
                missing += 1
            else:
                rec[RAW] = found
    return missing


def generations_of(samples: dict[str, list[dict]]) -> tuple[dict[str, dict[Any, Generation]], int]:
    """({task: {doc_id: Generation}} from samples carrying `RAW`, how many generation samples lack it); a document
    logged once per filter counts once."""
    out: dict[str, dict[Any, Generation]] = {}
    missing = 0
    for task, records in samples.items():
        for rec in records:
            args = rec.get("arguments") or []
            if not args or len(args[0]) != 2 or not isinstance(args[0][1], dict):
                continue
            if RAW not in rec:
                missing += rec.get("filter", "none") == records[0].get("filter", "none")
                continue
            r = rec[RAW]
            target = rec.get("target")  # the gold answer as lm-eval logged it (a list or index for some tasks)
            out.setdefault(task, {}).setdefault(rec["doc_id"], Generation(
                args[0][0], r["text"], r["tokens"], r["stopped"], r["max_tokens"],
                target if isinstance(target, str) else None))
    return out, missing
