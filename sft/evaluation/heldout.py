"""Held-out metrics: response loss, perplexity and token accuracy on the split training used (per role for chats).

The same NLL kernel as training (sft.core.loss.scored_nll), unweighted: `response_loss` means the same in every
regime, which is why checkpoints are ranked and runs compared on it.
"""

from __future__ import annotations

import math

import torch

from sft.core.collate import WeightedLMCollator
from sft.core.loss import scored_nll, shift_left, target_weights
from sft.core.prepare import prepare_data
from sft.data.conversations import ASSISTANT, ROLE_NAMES
from sft.data.errors import UserError
from sft.data.stats import is_chat
from sft.evaluation.settings import BATCH_SIZE


def device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- held-out metrics


def heldout_split(cfg, tokenizer, fingerprint: str | None = None):
    """The held-out split training used, tokenized for this tokenizer; refused if its rows changed since."""
    data = prepare_data(cfg.data, tokenizer)  # the split and tokenization of training
    found = data.info["eval_fingerprint"]
    if fingerprint and found != fingerprint:
        d = cfg.data
        raise UserError(f"The held-out rows ({d.eval_data or d.data}, split_seed={d.split_seed}) are not the ones the "
                         f"run was trained with (fingerprint {found}, manifest {fingerprint}): the data changed after "
                         "training. Retrain the runs on the current data, or restore the data they were trained on.")
    return data.eval


ROLE_GROUPS = (*ROLE_NAMES, "assistant_untrained")  # conversations' token groups: each role (assistant = trained)
ROLE_WEIGHTING = ("; conversations: <role>_loss likewise over the tokens of each role (the role of the token "
                  "predicted; template = the chat markup around assistant turns; tool_call, tool_output and "
                  "reasoning where the data has them), assistant_trained / assistant_untrained = the replies inside / "
                  "outside the loss (train_on=last)")


@torch.no_grad()
def heldout_metrics(model, dataset, pad_token_id: int, batch_size: int = BATCH_SIZE) -> dict[str, float]:
    """Response loss, perplexity and token accuracy on a tokenized split, summed over tokens; for conversations
    also the loss and tokens of each role (sft.data.conversations.ROLE_NAMES)."""
    model.eval()
    chat = is_chat(dataset)
    sums = torch.zeros(5, dtype=torch.float64)  # response nll, response tokens, correct, prompt nll, prompt tokens
    by_role = torch.zeros(2, len(ROLE_GROUPS), dtype=torch.float64)  # nll and tokens of each ROLE_GROUPS entry
    for start in range(0, len(dataset), batch_size):
        nll, hit, response, group = _score_batch(model, dataset[start:start + batch_size], pad_token_id, chat)
        nll, hit, response = nll.double(), hit.double(), response.double()
        sums += torch.stack([(nll * response).sum(), response.sum(), (hit * response).sum(),
                             (nll * (1 - response)).sum(), (1 - response).sum()]).cpu()
        if chat:
            by_role[0].index_add_(0, group.cpu(), nll.cpu())
            by_role[1].index_add_(0, group.cpu(), torch.ones_like(nll).cpu())
    r_nll, r_n, r_ok, p_nll, p_n = sums.tolist()
    loss = r_nll / r_n
    out = {
        "examples": len(dataset),
        "response_tokens": int(r_n),
        "response_loss": loss,
        "response_perplexity": math.exp(min(loss, 50.0)),
        "response_token_accuracy": r_ok / r_n,
        "prompt_tokens": int(p_n),
        "prompt_loss": p_nll / p_n if p_n else None,
    }
    return {**out, **role_metrics(by_role)} if chat else out


def _score_batch(model, cols: dict[str, list], pad_token_id: int, chat: bool):
    """(NLL, top token is the target, response mask, ROLE_GROUPS index) of every scored position of a batch."""
    keys = ("input_ids", "labels", "loss_weights", "response_mask")
    batch = WeightedLMCollator(pad_token_id=pad_token_id)([{k: cols[k][i] for k in keys}
                                                           for i in range(len(cols["input_ids"]))])
    batch = {k: v.to(model.device) for k, v in batch.items()}
    # As in training: the head runs on the scored positions only, a chunk at a time, so a
    # batch of Qwen2.5 never holds its full tokens x 152K-vocabulary logits.
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                output_hidden_states=True, logits_to_keep=1)
    masks = target_weights(batch)
    scored = (masks["response"] + masks["prompt"]) > 0
    nll, hit = scored_nll(out.hidden_states[-1][scored], model.get_output_embeddings(),
                          shift_left(batch["input_ids"])[scored])
    response = masks["response"][scored]
    if not chat:
        return nll, hit, response, None
    roles = torch.zeros_like(batch["input_ids"])  # each target token's role: the role of position t + 1
    for i, r in enumerate(cols["roles"]):
        roles[i, :len(r)] = torch.as_tensor(r)
    role = shift_left(roles)[scored]
    # An assistant token outside the loss (an earlier reply under train_on="last") is a group of its own.
    return nll, hit, response, torch.where((role == ASSISTANT) & (response == 0), len(ROLE_NAMES), role)


def role_metrics(by_role: torch.Tensor) -> dict[str, float | int | None]:
    """{<role>_tokens, <role>_loss} for template, system, user and assistant, and tool_call, tool_output and
    reasoning where the split has them; the assistant's trained and untrained tokens apart when there are
    untrained ones (train_on="last")."""
    nll, n = by_role.tolist()
    groups = dict(zip(ROLE_GROUPS, zip(nll, n)))
    trained, untrained = groups["assistant"], groups.pop("assistant_untrained")
    groups["assistant"] = (trained[0] + untrained[0], trained[1] + untrained[1])
    if untrained[1]:
        groups.update(assistant_trained=trained, assistant_untrained=untrained)
    agent = ROLE_NAMES[ASSISTANT + 1:]  # reported where the data has them, so plain conversations' columns stay
    out = {}
    for name, (total, count) in groups.items():
        if name in agent and not count:
            continue
        out[f"{name}_tokens"] = int(count)
        out[f"{name}_loss"] = total / count if count else None
    return out
