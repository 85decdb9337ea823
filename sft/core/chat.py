"""Conversations rendered through a chat template, every token with its role and turn; the end-of-turn rule.

Rendering goes through a Jinja chat template (the tokenizer's own, or a registered prompt template as a chat
template) without needing `{% generation %}` tags: each message's characters are found by rendering prefixes of
the conversation (messages[:i] vs messages[:i+1]), the whole text is tokenized once, and each token takes the role
and turn of the characters it covers. The ids are therefore exactly those of
`tokenizer.apply_chat_template(messages, tokenize=True)`. `stop_at_end_of_turn` is the rule that training saves
in a run's generation config and generation obeys: a reply ends at the template's end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sft.core.prompts import get_template
from sft.data.conversations import ASSISTANT, ROLES, SYSTEM, TEMPLATE

# ---------------------------------------------------------------- rendering


@dataclass
class ChatRenderer:
    """A chat template and the tokenizer it renders for; `render` maps a conversation to tokens with roles."""

    tokenizer: Any
    template: str  # the Jinja source
    specials: tuple[str, ...]  # special-token strings: an assistant turn ends with the last one its rendering adds

    def text(self, messages: list[dict], generation_prompt: bool = False) -> str:
        """The template's text for these messages."""
        if not messages:
            return ""
        return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int, int, int]]]:
        """(text, [(start, end, turn, role code)]) covering the text, later spans overriding earlier ones. A turn's
        markup (ChatML's `<|im_start|>user\n`, an assistant turn's header and trailer) is TEMPLATE; its content is
        its role (an assistant's with its end-of-turn token); a system prompt the template inserts by default
        (Qwen2.5's "You are Qwen...") is SYSTEM, and so is a system message the template moves into a later turn."""
        full = self.text(messages)
        spans, prev, pending = [], 0, None
        default = self.default_system() if messages[0]["role"] != "system" else None
        for i, m in enumerate(messages):
            cur = self.text(messages[: i + 1])
            if not full.startswith(cur) or len(cur) < prev:
                raise ValueError(f"turn {i + 1}: the chat template renders the earlier turns differently once this one "
                                 "follows, so its tokens cannot be told apart; use another template (--chat-template).")
            if m["role"] != "assistant":
                code = ROLES.index(m["role"]) + 1
                at = cur.find(m["content"], prev) if m["content"] else -1
                if at < 0:  # the template does not show the content verbatim: the whole turn is its role's
                    spans.append((prev, len(cur), i, code))
                    pending = m["content"] if m["role"] == "system" and m["content"] else pending
                else:
                    spans += [(prev, len(cur), i, TEMPLATE), (at, at + len(m["content"]), i, code)]
                for text_ in (t for t in (default if i == 0 else None, pending if code != SYSTEM else None) if t):
                    found = cur.find(text_, prev, at if at >= 0 else len(cur))
                    if found >= 0:
                        spans.append((found, found + len(text_), i, SYSTEM))
                        pending = None if text_ == pending else pending
            else:
                gen = self.text(messages[:i], generation_prompt=True) if i else ""
                start = len(gen) if cur.startswith(gen) and len(gen) >= prev else prev
                body = cur[start:]
                cut = max((body.rfind(s) + len(s) for s in self.specials if s and s in body), default=len(body))
                spans += [(prev, start, i, TEMPLATE), (start, start + cut, i, ASSISTANT),
                          (start + cut, len(cur), i, TEMPLATE)]
            prev = len(cur)
        spans.append((prev, len(full), len(messages) - 1, TEMPLATE))
        return full, [s for s in spans if s[1] > s[0]]

    def default_system(self) -> str | None:
        """The system prompt this template inserts when a conversation has none (Qwen2.5's "You are Qwen, created
        by Alibaba Cloud..."), found by rendering a user turn with and without a system turn; None if it adds none."""
        if not hasattr(self, "_default_system"):
            user, system = {"role": "user", "content": "\x01u\x01"}, {"role": "system", "content": "\x01s\x01"}
            try:
                alone, after = self.text([user]), self.text([system, user])
                sys_text = self.text([system])
            except Exception:  # a template that refuses a lone system turn or a user turn alone
                self._default_system = None
                return None
            header, user_header = alone[:alone.find("\x01u\x01")], after[len(sys_text):after.find("\x01u\x01")]
            block = header[:len(header) - len(user_header)] if header.endswith(user_header) else ""
            pre, _, post = sys_text.partition("\x01s\x01")
            content = block[len(pre):len(block) - len(post)] if block.startswith(pre) and block.endswith(post) else block
            self._default_system = content.strip("\n") or None
        return self._default_system

    def tokens(self, conversations: list[list[dict]]) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
        """(ids, role codes, turns) per conversation, the text of each tokenized once with offsets."""
        rendered = [self.spans(m) for m in conversations]
        encodings = encode_with_offsets(self.tokenizer, [text for text, _ in rendered])
        out = []
        for (text, spans), (ids, offsets) in zip(rendered, encodings):
            role = np.zeros(len(text) + 1, dtype=np.int8)
            turn = np.zeros(len(text) + 1, dtype=np.int32)
            for s, e, t, r in spans:
                role[s:e], turn[s:e] = r, t
            starts = np.asarray([o[0] for o in offsets], dtype=np.int64)
            ends = np.maximum(np.asarray([o[1] for o in offsets], dtype=np.int64), starts + 1)
            # A token that crosses into an assistant turn's content (a merge at its start) belongs to it.
            at = np.where(role[ends - 1] == ASSISTANT, ends - 1, starts)
            out.append((ids, role[at], turn[at]))
        return out

    def end_of_turn_id(self) -> int | None:
        """The special token that closes an assistant turn and weighs 1 (ChatML's <|im_end|>, EOS in the alpaca
        chat template): where a generated reply should stop. None where the turn ends on no special token."""
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        ids, roles, _ = self.tokens([probe])[0]
        last = int(ids[np.flatnonzero(roles == ASSISTANT)[-1]])
        return last if self.tokenizer.convert_ids_to_tokens(last) in self.specials else None


def encode_with_offsets(tokenizer, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """Token ids (no special tokens added, as apply_chat_template) and character offsets of each text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return list(zip(enc["input_ids"], enc["offset_mapping"]))


def chat_template_source(tokenizer, name: str, template: str, bos_token: bool) -> str:
    """The Jinja template conversations are rendered with: "auto" = the tokenizer's own, else the prompt template
    `template` as a chat template; "tokenizer" = the tokenizer's own (an error without one); or a template name."""
    own = getattr(tokenizer, "chat_template", None)
    if name == "tokenizer" and not own:
        raise ValueError("--chat-template tokenizer: this tokenizer has no chat_template; pass a template name such "
                         "as alpaca, or auto.")
    if name in ("auto", "tokenizer"):
        return own if own else get_template(template).chat_template(bos_token=bos_token)
    return get_template(name).chat_template(bos_token=bos_token)


def make_renderer(tokenizer, name: str, template: str, bos_token: bool) -> ChatRenderer:
    """A ChatRenderer for the chosen chat template (see chat_template_source)."""
    return renderer_for(tokenizer, chat_template_source(tokenizer, name, template, bos_token))


def renderer_for(tokenizer, source: str) -> ChatRenderer:
    """A ChatRenderer for the Jinja chat template `source`."""
    specials = tuple(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
    return ChatRenderer(tokenizer, source, specials)


def token_weights(roles: np.ndarray, turns: np.ndarray, w: float, train_on: str) -> tuple[np.ndarray, np.ndarray]:
    """(loss weight, trained) per token: weight 1 on the trained assistant tokens (every assistant turn's, or the
    last turn's with train_on="last"), w everywhere else."""
    trained = roles == ASSISTANT
    if train_on == "last" and trained.any():
        trained &= turns == turns[trained].max()
    return np.where(trained, 1.0, w).astype(np.float32), trained


def stop_at_end_of_turn(model, end_of_turn: int | None, eos: int, end_of_call: int | None = None) -> bool:
    """Make the model's generation config stop at a chat template's end-of-turn token as well as at EOS
    (eos_token_id [end_of_turn, eos, ...], as Qwen2.5-Instruct ships), and at the token that ends a tool call where
    the template ends calls apart (end_of_call_id), so transformers' generate, lm-eval and sft.evaluation.generate
    end a reply, or a call, where training taught it to end. False (nothing to do) where EOS ends both."""
    stops = [t for t in dict.fromkeys((end_of_turn, end_of_call)) if t is not None and t != eos]
    if not stops:
        return False
    config = model.generation_config  # a PeftModel's is its base model's, so it is changed in place
    ids = config.eos_token_id if config.eos_token_id is not None else eos
    ids = list(ids) if isinstance(ids, (list, tuple)) else [ids]
    missing = [t for t in stops if t not in ids]  # a chat model's config may have them already (Qwen2.5-Instruct's)
    if missing:
        config.eos_token_id = [*missing, *ids]
    return True


PROBE_TOOL = {"type": "function", "function": {"name": "probe_tool", "description": "A probe.",
                                               "parameters": {"type": "object", "properties": {}}}}


def end_of_call_id(renderer: ChatRenderer) -> int | None:
    """The special token that closes an assistant turn holding a tool call (ChatML's <|im_end|>, EOS in the alpaca
    chat template, Llama 3.1's <|eom_id|> where its calls end apart from its turns): where a generated call should
    stop. None where the template shows no call or closes it on no special token."""
    user = {"role": "user", "content": "Hi"}
    call = {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "probe_tool", "arguments": {}}}]}
    try:
        prompt, full = (renderer.tokenizer.apply_chat_template(m, tools=[PROBE_TOOL], chat_template=renderer.template,
                                                               tokenize=False, add_generation_prompt=g)
                        for m, g in (([user], True), ([user, call], False)))
    except Exception:  # a template that refuses tools or calls: nothing of its own to stop at
        return None
    body = full[len(prompt):] if full.startswith(prompt) else ""
    body = body[body.find("probe_tool"):] if "probe_tool" in body else ""
    ends = [(body.rfind(s) + len(s), s) for s in renderer.specials if s and s in body]
    return renderer.tokenizer.convert_tokens_to_ids(max(ends)[1]) if ends else None
