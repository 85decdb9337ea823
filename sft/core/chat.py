"""Conversations rendered through a chat template, every token with its role and turn; the end-of-turn rule.

Rendering goes through a Jinja chat template (the tokenizer's own, or a registered prompt template as a chat
template) without needing `{% generation %}` tags: each message's characters are found by rendering prefixes of
the conversation (messages[:i] vs messages[:i+1]), the whole text is tokenized once, and each token takes the role
and turn of the characters it covers. The ids are therefore exactly those of
`tokenizer.apply_chat_template(messages, tools=tools, tokenize=True)` (the messages as `template_messages` gives
them). Agent data: an assistant's tool calls, a tool's output and reasoning are told apart the same way, by
rendering with and without them. `stop_at_end_of_turn` is the rule that training saves
in a run's generation config and generation obeys: a reply ends at the template's end-of-turn token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from sft.core.prompts import get_template
from sft.data.conversations import (
    ASSISTANT,
    REASONING,
    REPLY_ROLES,
    ROLE_OF_MESSAGE,
    SYSTEM,
    TEMPLATE,
    TOOL_CALL,
)
from sft.data.errors import UserError

# ---------------------------------------------------------------- rendering

THINK = ("<think>", "</think>")  # the tags around reasoning, in the content or where a template puts it
STAND_IN = "\x01content\x01"  # rendered in a message's place to find where its content goes
EMPTY_THINK = re.compile(r"\s*(<think>\s*</think>)\s*")  # an empty reasoning block leading a reply, the blank line after it


@dataclass
class ChatRenderer:
    """A chat template and the tokenizer it renders for; `render` maps a conversation to tokens with roles."""

    tokenizer: Any
    template: str  # the Jinja source
    specials: tuple[str, ...]  # special-token strings: an assistant turn ends with the last one its rendering adds

    def text(self, messages: list[dict], generation_prompt: bool = False, tools: list[dict] | None = None) -> str:
        """The template's text for these messages (and the tools they may call)."""
        if not messages:
            return ""
        return self.tokenizer.apply_chat_template(messages, tools=tools or None, chat_template=self.template,
                                                  tokenize=False, add_generation_prompt=generation_prompt)

    def template_messages(self, messages: list[dict]) -> list[dict]:
        """The messages as the template is given them: keys without a value dropped (Arrow gives every message of a
        batch the same keys), and an assistant's reasoning_content written into its content as
        `<think>\n...\n</think>\n\n` where the template has no place for it (Qwen2.5's), so it is never lost."""
        out = []
        for m in messages:
            m = {k: v for k, v in m.items() if v is not None}
            if "reasoning_content" in m and not self.reasoning_slot():
                reasoning = m.pop("reasoning_content")
                m["content"] = f"{THINK[0]}\n{reasoning}\n{THINK[1]}\n\n{m['content']}"
            out.append(m)
        return out

    def spans(self, messages: list[dict], tools: list[dict] | None = None, added: list | None = None
              ) -> tuple[str, list[tuple[int, int, int, int]]]:
        """(text, [(start, end, turn, role code)]) covering the text, later spans overriding earlier ones. A turn's
        markup (ChatML's `<|im_start|>user\n`, an assistant turn's header and trailer) is TEMPLATE; its content is
        its role (an assistant's with its end-of-turn token), a tool's output with its wrapper (`<tool_response>`)
        TOOL_OUTPUT, an assistant's calls with their tags TOOL_CALL, its `<think>...</think>` (and the blank line
        after it) REASONING; a system
        prompt the template inserts by default (Qwen2.5's "You are Qwen...") is SYSTEM, and so are the tools it
        writes into the prompt and a system message the template moves into a later turn.

        Each message's text is found by rendering prefixes of the conversation (messages[:i] vs messages[:i+1]);
        only a tool turn followed by another tool turn may render differently once it is not the last (templates
        group consecutive tool outputs into one turn), and its text then ends where the two renderings part.

        added: a list that receives the (start, end) of the text the template adds on its own (its default system
        prompt, its tool list): no message's words, so no message's weight from the data applies to them."""
        messages = self.template_messages(messages)
        full = self.text(messages, tools=tools)
        spans, prev, pending, ends = [], 0, None, []
        default = self.default_system() if messages[0]["role"] != "system" else None
        for i, m in enumerate(messages):
            cur = self.text(messages[: i + 1], tools=tools)
            end = common_prefix(cur, full)
            grouped = m["role"] == "tool" and i + 1 < len(messages) and messages[i + 1]["role"] == "tool"
            end = back_off(full, end) if end < len(cur) and grouped else end
            if end < prev or (end < len(cur) and not grouped):
                raise UserError(f"turn {i + 1}: the chat template renders the earlier turns differently once this one "
                                 "follows, so its tokens cannot be told apart; use another template (--chat-template).")
            if m["role"] == "assistant":
                spans += self._reply_spans(messages, i, full, prev, end, tools)
                ends.append((i, end, ASSISTANT))
                prev = end
                continue
            code = ROLE_OF_MESSAGE[m["role"]]
            at = self._content_at(messages, i, full, prev, end, tools)
            if m["role"] == "tool" and (at >= 0 or not m["content"]):  # the output and its wrapper, not the markup
                head = self._header_end(full, prev, at if at >= 0 else end)
                tail = self._trailer_start(full, at + len(m["content"]) if at >= 0 else head, end)
                spans += [(prev, end, i, TEMPLATE), (head, tail, i, code)]
            elif at < 0:  # the template does not show the content verbatim: the whole turn is its role's
                spans.append((prev, end, i, code))
                pending = m["content"] if m["role"] == "system" and m["content"] else pending
            else:
                spans += [(prev, end, i, TEMPLATE), (at, at + len(m["content"]), i, code)]
            for text_ in (t for t in (default if i == 0 else None, pending if code != SYSTEM else None) if t):
                found = full.find(text_, prev, at if at >= 0 else end)
                if found >= 0:
                    spans.append((found, found + len(text_), i, SYSTEM))
                    if added is not None and text_ == default:
                        added.append((found, found + len(text_)))
                    pending = None if text_ == pending else pending
            ends.append((i, end, TEMPLATE))
            prev = end
        spans.append((prev, len(full), len(messages) - 1, TEMPLATE))
        if tools:
            spans += self._tools_spans(messages, full, tools, spans)
            if added is not None:
                added.append(spans[-1][:2])
        closing = self.next_turn_closing()
        # A template that closes a turn at the start of the next message: the closing token belongs to the turn it
        # closes, a reply's to the reply (as the next turn's markup, w = 0 would leave it out of the loss, and the
        # model would never learn to stop); another turn's is that turn's markup.
        spans += [(end, end + len(closing), i, code) for i, end, code in ends
                  if closing and full.startswith(closing, end)]
        return full, [s for s in spans if s[1] > s[0]]

    def _reply_spans(self, messages: list[dict], i: int, full: str, prev: int, end: int,
                     tools: list[dict] | None) -> list[tuple[int, int, int, int]]:
        """An assistant turn: header TEMPLATE, then its text and end-of-turn token ASSISTANT, within it its
        reasoning REASONING and each tool call TOOL_CALL, then the trailer TEMPLATE."""
        m = messages[i]
        gen = self.text(messages[:i], generation_prompt=True, tools=tools) if i else ""
        start = len(gen) if full.startswith(gen) and prev <= len(gen) <= end else prev
        body = full[start:end]
        cut = max((body.rfind(s) + len(s) for s in self.specials if s and s in body), default=len(body))
        eot = max((len(s) for s in self.specials if s and body[:cut].endswith(s)), default=0)
        reply_end = start + cut - eot  # where the turn's end-of-turn token starts
        spans = [(prev, start, i, TEMPLATE), (start, start + cut, i, ASSISTANT), (start + cut, end, i, TEMPLATE)]
        at = self._content_at(messages, i, full, start, reply_end, tools)
        spans += self._reasoning_spans(m, full, start, reply_end, i)
        calls = m.get("tool_calls") or []
        if calls:
            first = at + len(m["content"]) if at >= 0 else start
            bounds = [first] + self._call_bounds(messages, i, tools) + [reply_end]
            if bounds != sorted(bounds) or bounds[0] < start:  # a template that reorders: the calls as one span
                bounds = [first, reply_end]
            for call in calls:
                if full.find(call["function"]["name"], first, reply_end) < 0:
                    raise UserError(f"turn {i + 1}: the chat template does not render the tool call "
                                     f"{call['function']['name']!r}, so the model would not learn it; use a template "
                                     "that renders tool_calls (the tokenizer's own, e.g. Qwen2.5's).")
            spans += [(a, b, i, TOOL_CALL) for a, b in zip(bounds[:-1], bounds[1:])]
        return spans

    def _content_at(self, messages: list[dict], i: int, full: str, start: int, end: int,
                    tools: list[dict] | None) -> int:
        """Where message i's content begins in `full` (-1 if empty or not shown verbatim): where a stand-in for it
        lands when rendered in its place, so that the same words in the system prompt or the tool list (a user
        writing "You", a tool named like the question) are not taken for it; else its first occurrence."""
        content = messages[i]["content"]
        if not content:
            return -1
        try:
            probe = self.text(messages[:i] + [{**messages[i], "content": STAND_IN}], tools=tools).find(STAND_IN)
        except Exception:  # a template that checks the content: look for the words themselves
            probe = -1
        if start <= probe and probe + len(content) <= end and full.startswith(content, probe):
            return probe
        return full.find(content, start, end)

    def _call_bounds(self, messages: list[dict], i: int, tools: list[dict] | None) -> list[int]:
        """Where each tool call after the first begins: the renderings with the first k and k + 1 calls part there."""
        m, calls = messages[i], messages[i].get("tool_calls") or []
        texts = [self.text(messages[:i] + [{**m, "tool_calls": calls[:k]}], tools=tools) for k in range(1, len(calls))]
        texts.append(self.text(messages[: i + 1], tools=tools))
        return [back_off(a, common_prefix(a, b)) for a, b in zip(texts[:-1], texts[1:])]

    @staticmethod
    def _reasoning_spans(m: dict, full: str, start: int, end: int, i: int) -> list[tuple[int, int, int, int]]:
        """The reasoning of an assistant turn with its <think> tags and the blank line after them (Qwen's `>\n\n` is
        one token): a leading span of its content, or where the template put its reasoning_content. None where the
        template leaves it out."""
        content = m["content"].lstrip()
        if content.startswith(THINK[0]) and THINK[1] in content:
            reasoning = content[len(THINK[0]):content.find(THINK[1])]
        else:
            reasoning = m.get("reasoning_content") or ""
        if not reasoning.strip():  # an empty block (<think>\n\n</think>\n\n), written in the content or by the template
            empty = EMPTY_THINK.match(full, start, end)
            return [(empty.start(1), empty.end(), i, REASONING)] if empty else []
        at = full.find(reasoning.strip(), start, end)
        if at < 0:
            return []
        s, e = at, at + len(reasoning.strip())
        opening = full.rfind(THINK[0], start, s)
        s = opening if opening >= 0 and not full[opening + len(THINK[0]):s].strip() else s
        closing = full.find(THINK[1], e, end)
        if closing >= 0 and not full[e:closing].strip():  # the closing tag and the blank line after it
            e = closing + len(THINK[1])
            e += len(full[e:end]) - len(full[e:end].lstrip())
        return [(s, e, i, REASONING)]

    def _tools_spans(self, messages: list[dict], full: str, tools: list[dict],
                     spans: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
        """SYSTEM on the text the tools add (Qwen2.5: the "# Tools" block of the system turn): where the rendering
        with tools and the one without part. A template that does not render tools is an error, not a silent loss."""
        bare = self.text(messages)
        if bare == full:
            raise UserError("the chat template does not render the tools this conversation may call, so the model "
                             "would learn the calls without the tool list; use a template that renders tools (the "
                             "tokenizer's own, e.g. Qwen2.5's).")
        s = common_prefix(full, bare)
        e = len(full) - common_prefix(full[s:][::-1], bare[s:][::-1])
        turn = max((t for a, _, t, _ in spans if a <= s), default=0)
        return [(s, e, turn, SYSTEM)]

    def _header_end(self, full: str, start: int, end: int) -> int:
        """Where a turn's header ends: its special tokens, the role name after one, then line breaks
        (`<|im_start|>user\n`); `start` where the text does not open with a special token."""
        if not hasattr(self, "_header"):
            specials = "|".join(re.escape(s) for s in sorted(self.specials, key=len, reverse=True) if s)
            self._header = re.compile(rf"(?:(?:{specials})[ \t]*\w*)+[ \t]*\n*" if specials else r"(?!)")
        found = self._header.match(full, start, end)
        return found.end() if found else start

    def _trailer_start(self, full: str, start: int, end: int) -> int:
        """Where a turn's trailer begins: its first special token after `start` (ChatML's `<|im_end|>`), else end."""
        return min((k for k in (full.find(s, start, end) for s in self.specials if s) if k >= 0), default=end)

    def next_turn_closing(self) -> str:
        """The special tokens a template renders at the start of the message after an assistant turn to close that
        turn (`<|eot|><|user|>` where the stop token leads the next message), "" where an assistant turn's own rendering
        closes it (ChatML's `<|im_end|>`, the alpaca template's EOS). Found by rendering a reply alone and followed by
        a user turn: what comes between them, less the user turn's own header."""
        if hasattr(self, "_next_turn_closing"):
            return self._next_turn_closing
        self._next_turn_closing = ""
        user, reply, later = ({"role": r, "content": f"\x01{c}\x01"} for r, c in
                              (("user", "u"), ("assistant", "a"), ("user", "v")))
        try:
            alone, two, three = self.text([user]), self.text([user, reply]), self.text([user, reply, later])
        except Exception:  # a template that refuses the probe: nothing found, the turns as rendered
            return ""
        a, u, v = reply["content"], user["content"], later["content"]
        if a not in two or any(sp and sp in two[two.find(a) + len(a):] for sp in self.specials):
            return ""  # the reply's own rendering closes it
        gap = three[three.find(a) + len(a):three.find(v)]
        header = alone[:alone.find(u)]
        n = len(gap) - common_prefix(gap[::-1], header[::-1])  # the gap less the user turn's header
        specials = "|".join(re.escape(sp) for sp in sorted(self.specials, key=len, reverse=True) if sp)
        found = re.match(rf"(?:{specials})+", gap[:n]) if specials else None
        self._next_turn_closing = found.group(0) if found else ""
        return self._next_turn_closing

    def reasoning_slot(self) -> bool:
        """Whether the template renders an assistant's reasoning_content (Qwen3's does, Qwen2.5's does not)."""
        if not hasattr(self, "_reasoning_slot"):
            probe = [{"role": "user", "content": "u"},
                     {"role": "assistant", "content": "a", "reasoning_content": "\x01r\x01"}]
            try:
                self._reasoning_slot = "\x01r\x01" in self.text(probe)
            except Exception:  # a template that refuses the probe has no place for it
                self._reasoning_slot = False
        return self._reasoning_slot

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

    def tokens(self, conversations: list[list[dict]], tools: list | None = None, with_added: bool = False
               ) -> list[tuple]:
        """(ids, role codes, turns) per conversation, the text of each tokenized once with offsets; tools: the
        tools each conversation may call (a list per conversation, None where it has none). with_added: a fourth
        array, True on the tokens of text the template adds on its own (its default system prompt, its tool list),
        whose weight is their role's whatever the message they sit in weighs."""
        tools = tools if tools is not None else [None] * len(conversations)
        added_spans = [[] for _ in conversations]
        rendered = [self.spans(m, t, a) for m, t, a in zip(conversations, tools, added_spans)]
        encodings = encode_with_offsets(self.tokenizer, [text for text, _ in rendered])
        out = []
        for (text, spans), (ids, offsets), extra in zip(rendered, encodings, added_spans):
            role = np.zeros(len(text) + 1, dtype=np.int8)
            turn = np.zeros(len(text) + 1, dtype=np.int32)
            added = np.zeros(len(text) + 1, dtype=bool)
            for s, e, t, r in spans:
                role[s:e], turn[s:e] = r, t
            for s, e in extra:
                added[s:e] = True
            starts = np.asarray([o[0] for o in offsets], dtype=np.int64)
            ends = np.maximum(np.asarray([o[1] for o in offsets], dtype=np.int64), starts + 1)
            # A token that crosses into an assistant turn's reply (a merge at its start) belongs to it.
            at = np.where(np.isin(role[ends - 1], REPLY_ROLES), ends - 1, starts)
            out.append((ids, role[at], turn[at], added[at] & (role[at] == SYSTEM)) if with_added
                       else (ids, role[at], turn[at]))
        return out

    def end_of_turn_id(self) -> int | None:
        """The special token that closes an assistant turn and weighs 1 (ChatML's <|im_end|>, EOS in the alpaca
        chat template): where a generated reply should stop. None where the turn ends on no special token."""
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        if self.next_turn_closing():  # a template that closes a turn only when another follows it
            probe += [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]
        ids, roles, turns = self.tokens([probe])[0]
        last = int(ids[np.flatnonzero((roles == ASSISTANT) & (turns == 1))[-1]])
        return last if self.tokenizer.convert_ids_to_tokens(last) in self.specials else None


def common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix of two strings."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid)
    return lo


def back_off(text: str, pos: int) -> int:
    """A boundary found by two renderings parting, moved back to the start of a tag it falls inside (`<|im_end|>`
    and `<tool_call>` share their `<`)."""
    opening = text.rfind("<", max(0, pos - 32), pos)
    return opening if opening >= 0 and text.rfind(">", opening, pos) < 0 else pos


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
        raise UserError("--chat-template tokenizer: this tokenizer has no chat_template; pass a template name such "
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
