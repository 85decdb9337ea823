"""DialogueTask: an lm-eval generation task whose documents are conversations, the history sent as chat turns.

The dialogues' tasks (sft.studies.tasks) use it as it is; the tool-use tasks' ToolTask (sft.studies.tool_tasks)
builds on it, reading its history and tools from JSON text. A module of its own because sft.studies.tasks
imports sft.studies.tool_tasks, so the base both build on sits below both.
"""

from __future__ import annotations

from lm_eval.api.task import ConfigurableTask


class DialogueTask(ConfigurableTask):
    """A generation task whose documents are conversations: the history goes to the model as chat turns.

    lm-eval builds a chat prompt from a task's few-shot examples and one question (fewshot_context); here the
    "examples" are the document's own earlier turns. Through a chat template (apply_chat_template) the history
    (a system turn, earlier user and assistant turns, the last user turn) is rendered as those messages, the way
    fewshot_as_multiturn renders few-shot turns; without one, the prompt is `doc_to_text` (the history already
    rendered in the training chat template when the task was written). The last reply is the target.
    """

    def __init__(self, config: dict | None = None) -> None:
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"})  # TaskConfig has no class

    def chat_history(self, doc: dict) -> list[dict]:
        """The document's turns before the reply to generate, as chat messages."""
        return [{"role": m["role"], "content": m["content"]} for m in doc["history"]]

    def render_chat_prompt(self, chat_template, history: list[dict], doc: dict) -> str:
        """The history through the chat template, ending where the model's reply starts."""
        return chat_template(history, add_generation_prompt=True)

    def fewshot_context(self, doc: dict, num_fewshot: int, system_instruction: str | None = None,
                        apply_chat_template: bool = False, fewshot_as_multiturn: bool = False,
                        chat_template=None, gen_prefix: str | None = None) -> str:
        """The prompt of one dialogue: its history through the chat template, else the pre-rendered text."""
        if not (apply_chat_template and chat_template):
            return super().fewshot_context(doc, 0, system_instruction=system_instruction, gen_prefix=gen_prefix)
        history = self.chat_history(doc)
        if system_instruction and history[0]["role"] != "system":
            history.insert(0, {"role": "system", "content": system_instruction})
        return self.render_chat_prompt(chat_template, history, doc)
