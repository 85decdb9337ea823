"""Batched generation for case studies and notebooks: left padding, greedy by default, stop at EOS."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sft.prompts import get_template


@dataclass
class GenerationSettings:
    """Decoding settings, saved with every case study."""

    max_new_tokens: int = 64  # tokens generated per prompt at most
    do_sample: bool = False  # greedy by default: the same output every time
    temperature: float = 1.0  # only with do_sample
    top_p: float = 1.0  # only with do_sample
    seed: int = 0  # only with do_sample
    batch_size: int = 16  # prompts per generate() call


@torch.no_grad()
def generate_responses(model, tokenizer, prompts: list[str], settings: GenerationSettings | None = None) -> list[str]:
    """Generate a response for each rendered prompt, batched with left padding."""
    s = settings or GenerationSettings()
    if s.do_sample:
        torch.manual_seed(s.seed)
    model.eval()
    side = tokenizer.padding_side
    # Left padding: with right padding a batch's short prompts would continue after pad tokens.
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for i in range(0, len(prompts), s.batch_size):
            enc = tokenizer(prompts[i : i + s.batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            kwargs = dict(max_new_tokens=s.max_new_tokens, do_sample=s.do_sample,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            if s.do_sample:
                kwargs.update(temperature=s.temperature, top_p=s.top_p)
            ids = model.generate(**enc, **kwargs)
            new = ids[:, enc["input_ids"].shape[1]:]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return out


def render_prompts(template: str, rows: list[dict]) -> list[str]:
    """Render {instruction, input} rows with a registered template."""
    t = get_template(template)
    return [t.render(r["instruction"], r.get("input") or "") for r in rows]
