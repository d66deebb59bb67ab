"""Templates: how a record becomes the prompt a model reads and the target it learns to write.

A plain template is a Python format string over the record's fields ("{question}\\n" -> "{answer}").
A Hugging Face checkpoint may carry its own chat template (Jinja, in tokenizer_config.json or
chat_template.jinja); with `generative.chat_template: auto` the prompt text is then sent as the user
turn and the target as the assistant turn, rendered by that template in Jinja's sandbox (as
`transformers` renders it), so the model sees the turn markers it was trained with.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxlm.config_checks import template_fields
from jaxlm.errors import DataError

CHAT_TEMPLATE_FILE = "chat_template.jinja"


@dataclass(frozen=True)
class Templates:
    """Prompt and target templates, and the chat template wrapping them (None: plain text)."""

    prompt: str = "{input}\n"
    target: str = "{output}"
    chat: str | None = None

    @property
    def fields(self) -> list[str]:
        """The record fields the templates name, in order of first use."""
        names = template_fields(self.prompt, "generative.prompt_template")
        names += template_fields(self.target, "generative.target_template")
        return list(dict.fromkeys(names))

    def texts(self, record: dict[str, str], special: dict[str, str]) -> tuple[str, str]:
        """(prompt text, target text) of a record that has every field (see `missing`)."""
        prompt, target = self.prompt.format(**record), self.target.format(**record)
        if self.chat is None:
            return prompt, target
        head = self.prompt_text(record, special)
        full = render_chat(self.chat, [{"role": "user", "content": prompt},
                                       {"role": "assistant", "content": target}], special, False)
        if not full.startswith(head):  # a template that re-renders earlier turns differently
            return head, target
        return head, full[len(head):]

    def prompt_text(self, record: dict[str, str], special: dict[str, str]) -> str:
        """The prompt text alone (what generation starts from), as `texts` gives it: the target
        template's fields may be absent."""
        prompt = self.prompt.format(**record)
        if self.chat is None:
            return prompt
        return render_chat(self.chat, [{"role": "user", "content": prompt}], special, True)

    @property
    def prompt_fields(self) -> list[str]:
        """The record fields the prompt template names, in order of first use."""
        return list(dict.fromkeys(template_fields(self.prompt, "generative.prompt_template")))

    def missing(self, record: dict[str, str]) -> list[str]:
        """Fields the templates name that the record lacks."""
        return [f for f in self.fields if f not in record]


def render_chat(template: str, messages: list[dict[str, str]], special: dict[str, str],
                add_generation_prompt: bool) -> str:
    """A chat template rendered in Jinja's immutable sandbox (no attribute access to Python
    internals, no file or module access), with the variables Hugging Face templates use."""
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # jinja2 is a dependency of jaxlm; a broken install lacks it
        raise DataError(f"Chat templates need jinja2 ({e}); reinstall jaxlm.",
                        culprit="generative.chat_template") from None

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False,
                                                              indent=indent)
    try:
        return env.from_string(template).render(messages=messages,
                                                add_generation_prompt=add_generation_prompt,
                                                **special)
    except TemplateError as e:
        raise DataError(f"The checkpoint's chat template failed to render a (user, assistant) "
                        f"conversation: {e}. Set generative.chat_template: none to use the plain "
                        "templates instead.", culprit="generative.chat_template") from None


def find_chat_template(folder: str | Path) -> str | None:
    """The chat template a checkpoint folder carries: chat_template.jinja, else the
    `chat_template` of tokenizer_config.json (the default one when it lists several)."""
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    jinja = folder / CHAT_TEMPLATE_FILE
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        value: Any = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None  # the tokenizer itself is read from tokenizer.json; this file is optional
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default") or next(iter(named.values()), None)
    return value if isinstance(value, str) and value.strip() else None
