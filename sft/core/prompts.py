"""Prompt templates: how an (instruction, input) pair becomes the text the model continues.

A template is registered once by name, so a notebook, the command line, the evaluation and
the case studies all render exactly the same prompt for a model (the name is saved in each
run's manifest).  To add one, call `register_template(Template(name=..., ...))`.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass

from sft.data.errors import UserError


@dataclass(frozen=True)
class Template:
    """A prompt format in two forms: with a non-empty `input`, and without."""

    name: str
    prompt_input: str  # uses {instruction} and {input}
    prompt_no_input: str  # uses {instruction}
    description: str = ""

    def render(self, instruction: str, input: str | None = None) -> str:
        """Return the prompt text; the response is appended directly after it."""
        if input:  # None and "" both mean "no input", as in Stanford Alpaca
            return self.prompt_input.format(instruction=instruction, input=input)
        return self.prompt_no_input.format(instruction=instruction)

    def render_spans(self, instruction: str, input: str | None = None) -> tuple[str, list[tuple[int, int]]]:
        """(render(instruction, input), the (start, end) character spans of the user's words in it): the
        instruction and the input; everything else (the preamble, the ### headers) is the template's."""
        fmt = self.prompt_input if input else self.prompt_no_input
        values = {"instruction": instruction, "input": input or ""}
        text, spans = [], []
        for literal, name, _, _ in string.Formatter().parse(fmt):
            text.append(literal)
            if name is not None:
                start = sum(map(len, text))
                text.append(values[name])
                spans.append((start, start + len(values[name])))
        return "".join(text), spans

    def chat_template(self, bos_token: bool = False) -> str:
        """This template as a Jinja chat template, saved with every fine-tuned model's tokenizer.

        `apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True)` renders
        exactly `render(instruction)`; the input travels as a second text part of the user message,
        `{"role": "user", "content": [{"type": "text", "text": instruction}, {"type": "text", "text": input}]}`.
        A user turn already ends with the response cue ("### Response:\n"), so add_generation_prompt adds
        nothing; an assistant turn is its content and EOS, as training saw it (inside `{% generation %}`, so
        `return_assistant_tokens_mask` works). The template has no system slot: a system message (lm-eval sends a
        task's description so, e.g. MMLU's "The following are multiple choice questions...") opens the next
        instruction, where the raw prompt has it too. Tool calling (`apply_chat_template(messages, tools=tools)`):
        the tools open the text as a `### Tools:` block, one JSON schema a line; an assistant's calls follow its
        content as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (TOOL_CALL_OPEN/CLOSE, one a line),
        before its EOS; a tool reply is `### Tool output:` and its content, and the assistant turn after it opens
        with the response cue `### Response:` (add_generation_prompt adds that cue after a tool reply). Conversations
        without tools render exactly as before. Other roles are an error.
        bos_token: start with the BOS token, for tokenizers that add one by themselves (Llama-style).
        """
        return CHAT_TEMPLATE.format(
            name=self.name, bos="{{- bos_token -}}\n" if bos_token else "", call_open=TOOL_CALL_OPEN,
            call_close=TOOL_CALL_CLOSE, with_input=_jinja_expression(self.prompt_input),
            no_input=_jinja_expression(self.prompt_no_input))


def user_message(instruction: str, input: str | None = None) -> dict:
    """The user message that Template.chat_template renders as render(instruction, input); input is a second part."""
    if not input:
        return {"role": "user", "content": instruction}
    return {"role": "user", "content": [{"type": "text", "text": instruction}, {"type": "text", "text": input}]}


TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"  # around each call in the chat form (Qwen2.5's tags)
TOOL_CALL_RE = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.DOTALL)


def format_tool_calls(calls: list[dict]) -> str:
    """Calls ({"name", "arguments"}, or {"function": {...}} as messages carry them) as the chat template renders them
    after an assistant's content: one <tool_call>{"name": ..., "arguments": {...}}</tool_call> a line."""
    fns = [c.get("function", c) for c in calls]
    return "\n".join(TOOL_CALL_OPEN + json.dumps({"name": f["name"], "arguments": f["arguments"]}, ensure_ascii=False)
                     + TOOL_CALL_CLOSE for f in fns)


def parse_tool_calls(text: str) -> list[dict] | None:
    """The calls in a reply, [{"name": str, "arguments": dict}] (arguments given as a JSON string are read too), [] where
    it holds none; None where a <tool_call> span is not such a JSON object (an unclosed last span is read to the end:
    generation may stop at the closing tag)."""
    calls = []
    for body in TOOL_CALL_RE.findall(text):
        try:
            call = json.loads(body)
            arguments = call.get("arguments") if isinstance(call, dict) else None
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError:
            return None
        if not isinstance(arguments, dict) or not isinstance(call.get("name"), str):
            return None
        calls.append({"name": call["name"], "arguments": arguments})
    return calls


# The Jinja skeleton of Template.chat_template: {name}, {bos}, {with_input} and {no_input} are filled in by
# str.format, which is why Jinja's own braces are doubled here.
CHAT_TEMPLATE = """\
{{#- The training prompt of this model (sft.core.prompts template '{name}'): the user message is the instruction, \
or [instruction, input] as two text parts. -#}}
{bos}{{%- set ns = namespace(system='') -%}}
{{%- if tools -%}}
{{{{- '### Tools:\n' -}}}}
{{%- for tool in tools -%}}
{{{{- (tool['function'] if tool['function'] is defined else tool) | tojson -}}}}
{{{{- '\n' -}}}}
{{%- endfor -%}}
{{{{- '\n' -}}}}
{{%- endif -%}}
{{%- for message in messages -%}}
{{%- if message['role'] == 'system' -%}}
{{%- set ns.system = message['content'] -%}}
{{%- elif message['role'] == 'user' -%}}
{{%- if message['content'] is string -%}}
{{%- set parts = [message['content']] -%}}
{{%- else -%}}
{{%- set parts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}}
{{%- endif -%}}
{{%- if parts | length == 0 or parts | length > 2 -%}}
{{{{- raise_exception('The {name} template takes a user message of 1 or 2 text parts (instruction, input).') -}}}}
{{%- endif -%}}
{{%- set instruction = ns.system ~ parts[0] -%}}
{{%- set ns.system = '' -%}}
{{%- set input = parts[1] if parts | length > 1 else '' -%}}
{{%- if input -%}}
{{{{- {with_input} -}}}}
{{%- else -%}}
{{{{- {no_input} -}}}}
{{%- endif -%}}
{{%- elif message['role'] == 'assistant' -%}}
{{%- if loop.previtem is defined and loop.previtem['role'] == 'tool' -%}}
{{{{- '### Response:\n' -}}}}
{{%- endif -%}}
{{%- set content = '' if message['content'] is none else message['content'] -%}}
{{%- generation -%}}
{{{{- content -}}}}
{{%- for call in (message['tool_calls'] if message['tool_calls'] is defined and message['tool_calls'] else []) -%}}
{{%- set fn = call['function'] if call['function'] is defined else call -%}}
{{%- set arguments = fn['arguments'] if fn['arguments'] is string else (fn['arguments'] | tojson) -%}}
{{{{- ('\n' if content or not loop.first else '') + '{call_open}{{"name": ' + (fn['name'] | tojson) + ', "arguments": ' + arguments + '}}{call_close}' -}}}}
{{%- endfor -%}}
{{{{- eos_token -}}}}
{{%- endgeneration -%}}
{{%- elif message['role'] == 'tool' -%}}
{{{{- '### Tool output:\n' + message['content'] + '\n\n' -}}}}
{{%- else -%}}
{{{{- raise_exception('The {name} template has no ' + message['role'] + ' role: pass system, user, assistant and tool messages.') -}}}}
{{%- endif -%}}
{{%- endfor -%}}
{{%- if add_generation_prompt and messages and messages[-1]['role'] == 'tool' -%}}
{{{{- '### Response:\n' -}}}}
{{%- endif -%}}
"""


def _jinja_expression(fmt: str) -> str:
    """A str.format prompt ('...{instruction}...') as a Jinja expression joining string literals and variables."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(fmt):
        if literal:
            parts.append(json.dumps(literal, ensure_ascii=False))  # JSON's escapes (\n, \") are Jinja's too
        if name is not None:
            if name not in ("instruction", "input"):
                raise UserError(f"A prompt template may use {{instruction}} and {{input}} only, not {{{name}}}.")
            parts.append(name)
    return " ~ ".join(parts)


# Stanford Alpaca's wording (tatsu-lab/stanford_alpaca train.py, PROMPT_DICT), with the newline
# after "### Response:" of the alpaca-lora template for which alpaca-cleaned was made.
ALPACA = Template(
    name="alpaca",
    prompt_input=(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    prompt_no_input=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"
    ),
    description="Stanford Alpaca, prompt ending in '### Response:' and a newline (alpaca-lora).",
)

TEMPLATES: dict[str, Template] = {}


def register_template(template: Template) -> Template:
    """Add a template to the registry under its name (names are unique)."""
    if template.name in TEMPLATES:
        raise UserError(f"A template named {template.name!r} is already registered; pick another name.")
    TEMPLATES[template.name] = template
    return template


def get_template(name: str) -> Template:
    """Look a template up by name, with the known names in the error."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UserError(
            f"Unknown prompt template {name!r}. Known templates: {', '.join(sorted(TEMPLATES))}; "
            "register a new one with sft.core.prompts.register_template."
        ) from None


def render_prompt(template_name: str, instruction: str, input: str | None = None) -> str:
    """Render the prompt of one example with the named template."""
    return get_template(template_name).render(instruction, input)


register_template(ALPACA)
