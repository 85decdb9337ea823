"""sft/core/loss.py and the batching modes: the plain weighted cross-entropy is the loss; the selective head and
packing change its cost, never its value or its gradient."""

import math

import pytest
import torch

from helpers import demo_config
from sft.core.collate import PackedWeightedLMCollator, WeightedLMCollator
from sft.core.costs import (
    HEAD_CHUNK_BYTES,
    HEAD_CHUNK_TOKENS,
    head_chunk_peak_rows,
    head_chunk_rows,
    head_chunk_tokens,
)
from sft.core.loss import (
    batch_normalizer,
    selected_nll,
    selective_head_loss,
    target_weights,
    token_nll,
    weighted_cross_entropy,
)
from sft.core.train import build_trainer, train


NORMALIZERS = ("weight_sum", "response_tokens", "weighted_tokens")  # every loss_normalizer the trainer offers


def random_batch(layout: str, dtype=torch.float64, scale: float = 1.0, seed: int = 0):
    """(hidden states [B, T, H] requiring grad, a bias-free head, input_ids, target_weights' masks) of a random batch
    shaped as the collators make it: fractional weights, zero weights (the prompt at w = 0: labels -100), response
    tokens, right padding ("padded", 3 rows of 3 lengths) or three examples in one row ("packed")."""
    torch.manual_seed(seed)
    b, t, h, v = (3, 23, 16, 300) if layout == "padded" else (1, 41, 16, 300)
    hidden = (torch.randn(b, t, h, dtype=dtype) * scale / h**0.5).requires_grad_()
    head = torch.nn.Linear(h, v, bias=False).to(dtype)
    ids = torch.randint(1, v, (b, t))
    if layout == "padded":
        pos = torch.arange(t).expand(b, t)
        batch = {"attention_mask": (pos < torch.tensor([[t], [t - 6], [9]])).long()}
        ids = ids.masked_fill(batch["attention_mask"] == 0, 0)  # pad id 0, as the demo's tokenizer pads
        response = pos >= torch.tensor([[7], [4], [5]])  # a prompt of 7, 4 and 5 tokens, then the response
    else:
        starts = [0, 13, 27]  # example boundaries: no position may predict the next example's first token
        pos = torch.cat([torch.arange(e - s) for s, e in zip(starts, starts[1:] + [t])])[None]
        batch = {"position_ids": pos}
        response = pos >= 5  # each example: a prompt of 5 tokens, then the response
    weights = torch.where(response, torch.rand(b, t) * 0.8 + 0.2, torch.rand(b, t) * 0.5)  # fractional
    weights[(torch.rand(b, t) < 0.3) & ~response] = 0.0  # prompt tokens outside the loss
    weights[:, 2] = 0.0
    batch.update(input_ids=ids, response_mask=response.long(), loss_weights=weights)
    return hidden, head, ids, target_weights(batch)


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("normalizer", NORMALIZERS)
@pytest.mark.parametrize("chunk", [1, 7, None])  # one row at a time; several chunks with a ragged last; the default
def test_selective_head_loss_equals_the_plain_weighted_cross_entropy(layout, normalizer, chunk):
    hidden, head, ids, masks = random_batch(layout)
    w = masks["weights"]
    assert (w == 0).any() and ((w > 0) & (w < 1)).any() and (masks["prompt"] + masks["response"] == 0).any()
    norm = batch_normalizer(masks, normalizer)
    plain = weighted_cross_entropy(hidden @ head.weight.T, ids, w, norm)  # float64 throughout: the reference
    seen = (masks["response"] + masks["prompt"]) > 0
    weighted, nll, scored = selective_head_loss(hidden, head, ids, w, score=seen, chunk=chunk)
    loss = weighted / norm
    # float64 inputs, float32 logits inside the head: equal to float32 precision.
    torch.testing.assert_close(loss.double(), plain.detach(), rtol=1e-6, atol=1e-6)
    g_h, g_w = torch.autograd.grad(loss * 3.0, (hidden, head.weight))
    r_h, r_w = torch.autograd.grad(plain * 3.0, (hidden, head.weight))
    torch.testing.assert_close(g_h, r_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_w, r_w, rtol=1e-5, atol=1e-6)
    assert g_h[(w == 0)].abs().max() == 0  # a position of weight 0 contributes no gradient
    # The logs' per-position NLL: every real target scored (zero weights without gradient), nothing else.
    full = token_nll(hidden.detach() @ head.weight.T.detach(), ids)
    assert torch.equal(scored.bool(), seen)
    torch.testing.assert_close(nll, full * seen, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 300.0])  # ordinary logits, and logits in the hundreds (overflow without max)
def test_selective_head_float32_equals_plain_weighted_cross_entropy(scale):
    hidden, head, ids, masks = random_batch("padded", dtype=torch.float32, scale=scale, seed=1)
    w, norm = masks["weights"], batch_normalizer(masks)
    loss = selective_head_loss(hidden, head, ids, w, chunk=16)[0] / norm
    ref = weighted_cross_entropy(hidden.double() @ head.weight.double().T, ids, w, norm)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-5 * scale)
    g_h, g_w = torch.autograd.grad(loss / 7.0, (hidden, head.weight))
    r_h, r_w = torch.autograd.grad(ref / 7.0, (hidden, head.weight))
    # The reference's gradients come back to the float32 leaves from a float64 computation.
    torch.testing.assert_close(g_h, r_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_w, r_w, rtol=1e-5, atol=1e-6 * scale)
    # In float32 the plain loss itself is the trainer's full-logits path (token_nll), bit for bit.
    logits = (hidden @ head.weight.T).detach()
    assert torch.equal(weighted_cross_entropy(logits, ids, w, norm), (token_nll(logits, ids) * w).sum() / norm)


def test_plain_and_selective_loss_equal_a_value_worked_by_hand():
    # Logits chosen so the probabilities are exact: position 0 gives token 1 p = 2/4, position 1 gives token 2
    # p = 3/5; position 2 predicts nothing. Token weights 0.3, 1, 0.5 move one left: w = (1, 0.5, 0).
    logits = torch.log(torch.tensor([[[1.0, 2.0, 1.0], [1.0, 1.0, 3.0], [5.0, 1.0, 1.0]]]))
    batch = {"input_ids": torch.tensor([[0, 1, 2]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "response_mask": torch.tensor([[0, 1, 1]]), "loss_weights": torch.tensor([[0.3, 1.0, 0.5]])}
    masks = target_weights(batch)
    assert masks["weights"].tolist() == [[1.0, 0.5, 0.0]]
    numerator = math.log(2) + 0.5 * math.log(5 / 3)  # 0.9485599...
    head = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))  # the hidden states are the logits
    for normalizer, denominator in (("weight_sum", 1.5), ("response_tokens", 2.0), ("weighted_tokens", 2.0)):
        norm = batch_normalizer(masks, normalizer)
        assert float(norm) == denominator
        golden = numerator / denominator  # 0.6323733 and 0.4742800
        assert float(weighted_cross_entropy(logits, batch["input_ids"], masks["weights"], norm)) == pytest.approx(
            golden, rel=1e-6)
        loss = selective_head_loss(logits, head, batch["input_ids"], masks["weights"])[0] / norm
        assert float(loss.detach()) == pytest.approx(golden, rel=1e-6)


def test_head_chunk_follows_the_vocabulary_and_the_memory_budget():
    assert head_chunk_tokens(151936) == HEAD_CHUNK_BYTES // (4 * 151936) == 883  # Qwen2.5: 512 MiB of fp32 logits
    assert head_chunk_tokens(4096) == HEAD_CHUNK_TOKENS  # small vocabularies: capped
    assert head_chunk_tokens(10**9) == 1
    assert head_chunk_tokens(1000, budget=4000 * 7) == 7


def test_head_chunks_are_equal_and_share_a_small_remainder():
    # Qwen2.5: 946 positions (a step of bench/real_vocab.py) make one chunk, not 883 + 63; 994 make two of 497.
    assert head_chunk_rows(946, 883) == 946 and head_chunk_rows(993, 883) == 993 and head_chunk_rows(994, 883) == 497
    assert head_chunk_rows(2000, 883) == 667 and head_chunk_rows(1, 883) == 1 and head_chunk_rows(0, 883) == 1
    for chunk in (1, 6, 16, 883):
        peak = chunk + chunk // 8
        for n in range(1, 3000):
            rows, plain = head_chunk_rows(n, chunk), -(-n // chunk)  # plain: chunks of `chunk` rows, a ragged last
            chunks = -(-n // rows)
            assert rows <= peak and chunks <= plain  # never over the slack, never more chunks than the plain split
            if n > chunk and 0 < n % chunk <= chunk // 8:
                assert chunks <= plain - 1  # a small remainder makes no chunk of its own
    # plan counts the largest chunk any selection of up to `tokens` positions makes.
    v = 151_936
    for tokens in (1, 500, 883, 946, 993, 994, 5000):
        assert head_chunk_peak_rows(tokens, v) == max(head_chunk_rows(n, 883) for n in range(1, tokens + 1))


@pytest.mark.parametrize("k", [9, 13, 43])  # one chunk with the remainder shared in; 7 + 6; 5 x 8 + 3
def test_selective_head_default_chunk_gives_the_same_loss_and_gradients(monkeypatch, k):
    torch.manual_seed(2)
    h, v = 8, 500
    hidden = torch.randn(k, h, requires_grad=True)
    head = torch.nn.Linear(h, v, bias=False)
    targets, w = torch.randint(0, v, (k,)), torch.rand(k)
    monkeypatch.setattr("sft.core.costs.HEAD_CHUNK_BYTES", 4 * v * 8)  # 8 rows a chunk: the ragged last one included
    assert head_chunk_tokens(v) == 8 and head_chunk_rows(k, 8) == {9: 9, 13: 7, 43: 8}[k]
    results = []
    for chunk in (None, 1):  # the default chunks, and one position at a time
        loss, nll = selected_nll(hidden, head, targets, w, chunk=chunk)
        results.append((loss, nll, *torch.autograd.grad(loss, (hidden, head.weight))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_selective_head_graph_refuses_a_second_backward():
    hidden = torch.randn(5, 4, requires_grad=True)
    head = torch.nn.Linear(4, 9, bias=False)
    loss, _ = selected_nll(hidden, head, torch.randint(0, 9, (5,)), torch.ones(5))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()  # the gradients were scaled in place: a second pass must fail, not double-scale


@pytest.mark.parametrize("w", [0.0, 0.1, 1.0])
def test_trainer_selective_head_matches_full_logits(demo_root, w):
    trainer = build_trainer(demo_config(demo_root, prompt_loss_weight=w, run_name="sel"))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    results = []
    for selective in (True, False):
        trainer.selective_head = selective
        trainer.model.zero_grad()
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]))
    (l_sel, g_sel), (l_full, g_full) = results
    torch.testing.assert_close(l_sel, l_full, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_sel, g_full):  # float32: the same sums in another order
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_packed_example_losses_equal_the_example_alone(demo_root):
    trainer = build_trainer(demo_config(demo_root, prompt_loss_weight=1.0, run_name="pack"))
    model = trainer.model.eval()
    examples = [trainer.train_dataset[i] for i in range(5)]
    packed = PackedWeightedLMCollator(pad_token_id=0)(examples)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    with torch.no_grad():
        trainer.selective_head = False
        _, nll_packed, _, _ = trainer._token_nll(model, packed, target_weights(packed))
        start = 0
        for ex in examples:
            alone = WeightedLMCollator(pad_token_id=0)([ex])
            _, nll_alone, _, _ = trainer._token_nll(model, alone, target_weights(alone))
            n = len(ex["input_ids"])
            # Positions 0..n-2 predict the example's own tokens; n-1 would predict the next example's first.
            torch.testing.assert_close(nll_packed[0, start:start + n - 1], nll_alone[0, :n - 1], rtol=1e-4, atol=1e-5)
            assert target_weights(packed)["weights"][0, start + n - 1] == 0
            start += n
    # Without isolation the same tokens would see the previous examples: the losses would differ.
    with torch.no_grad():
        leaky = model(input_ids=packed["input_ids"], attention_mask=torch.ones_like(packed["input_ids"])).logits
    n0 = len(examples[0]["input_ids"])
    assert not torch.allclose(token_nll(leaky, packed["input_ids"])[0, n0:n0 + 10], nll_packed[0, n0:n0 + 10],
                              atol=1e-3)


@pytest.mark.parametrize("batching", ["grouped", "packed"])
def test_batching_modes_give_the_same_loss_on_one_step(demo_root, batching):
    losses = {}
    for mode in ("padded", batching):
        trainer = build_trainer(demo_config(demo_root, prompt_loss_weight=0.1, run_name=mode, batching=mode))
        examples = [trainer.train_dataset[i] for i in range(8)]
        batch = trainer.data_collator(examples)
        trainer.model.train()
        losses[mode] = trainer.compute_loss(trainer.model, dict(batch)).item()
    assert losses[batching] == pytest.approx(losses["padded"], rel=1e-5)


@pytest.mark.slow
def test_default_batching_reaches_padded_held_out_loss(demo_root):
    """A short run per mode and seed: the default's held-out response loss is within the seed spread."""
    final = {}
    for mode in ("padded", "auto"):
        for seed in (1, 2):
            cfg = demo_config(demo_root, run_name=f"b-{mode}-{seed}", batching=mode, seed=seed, max_steps=40,
                              eval_steps=40, save_steps=1000, learning_rate=3e-3, overwrite=True)
            trainer = train(cfg)
            final[mode, seed] = [h["eval_response_loss"] for h in trainer.state.log_history
                                 if "eval_response_loss" in h][-1]
    padded = [final["padded", s] for s in (1, 2)]
    default = [final["auto", s] for s in (1, 2)]
    spread = max(padded) - min(padded)
    assert abs(sum(default) / 2 - sum(padded) / 2) <= max(spread, 1e-3), final
