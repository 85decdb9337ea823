"""Prompt templates: how an (instruction, input) pair becomes the text the model continues.

A template is registered once by name, so a notebook, the command line, the evaluation and
the case studies all render exactly the same prompt for a model (the name is saved in each
run's manifest).  To add one, call `register_template(Template(name=..., ...))`.
"""

from __future__ import annotations

from dataclasses import dataclass


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
        raise ValueError(f"A template named {template.name!r} is already registered; pick another name.")
    TEMPLATES[template.name] = template
    return template


def get_template(name: str) -> Template:
    """Look a template up by name, with the known names in the error."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"Unknown prompt template {name!r}. Known templates: {', '.join(sorted(TEMPLATES))}; "
            "register a new one with sft.prompts.register_template."
        ) from None


def render_prompt(template_name: str, instruction: str, input: str | None = None) -> str:
    """Render the prompt of one example with the named template."""
    return get_template(template_name).render(instruction, input)


register_template(ALPACA)
