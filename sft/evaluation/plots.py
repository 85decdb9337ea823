"""Plots for the notebooks: token lengths and the loss curves of a run."""

from __future__ import annotations

import matplotlib.pyplot as plt


def plot_length_histogram(ds, max_length: int | None = None, title: str = "Token lengths"):
    """Histogram of example lengths, split into prompt and response tokens (conversations: the trained replies
    and the rest)."""
    lengths = ds["length"]
    response = [sum(m) for m in ds["response_mask"]]
    prompt = [n - r for n, r in zip(lengths, response)]
    chat = bool(ds[0]["chat"]) if "chat" in ds.column_names and len(ds) else False
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = 40
    ax.hist(lengths, bins=bins, alpha=0.6, label="whole example")
    ax.hist(prompt, bins=bins, alpha=0.6, label="system, user, markup, untrained replies" if chat else "prompt")
    ax.hist(response, bins=bins, alpha=0.6, label="trained replies + end of turn" if chat else "response + EOS")
    if max_length:
        ax.axvline(max_length, color="k", ls="--", lw=1, label=f"max_length={max_length}")
    ax.set(xlabel="tokens", ylabel="examples", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_losses(log_history: list[dict], title: str = "Losses"):
    """Training and held-out response/prompt loss against the optimizer step."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, style in (("response_loss", "-"), ("prompt_loss", ":"), ("eval_response_loss", "-o"),
                       ("eval_prompt_loss", ":o")):
        points = [(h["step"], h[key]) for h in log_history if key in h]
        if points:
            ax.plot(*zip(*points), style, label=key, markersize=3)
    ax.set(xlabel="optimizer step", ylabel="mean token NLL", title=title)
    ax.legend()
    fig.tight_layout()
    return fig
