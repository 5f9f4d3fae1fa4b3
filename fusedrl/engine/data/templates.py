"""Chat templates: pick one, and cut a rendered conversation into prompt and trainable text.

A conversation is rendered with the tokenizer's ``apply_chat_template`` and then
split into pieces ``(text, trainable)``: the text of each assistant message of
the completion, up to and including the template's end-of-turn token (not the
whitespace after it), is trainable; everything else (system, user and tool
turns, the assistant header that ``add_generation_prompt`` produces) is not. The cut points come from
rendering growing prefixes of the conversation, so any template whose render of
a prefix is a prefix of the full render works.
"""
from __future__ import annotations

import logging
import os

import jinja2

from .validation import TEMPLATE, BadRow

log = logging.getLogger(__name__)

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEMPLATES = {"chatml": CHATML}


def resolve_template(tokenizer, name: str | None) -> str:
    """The Jinja text to render with: ``name`` from ``TEMPLATES``, a Jinja string, or (``None``)
    the tokenizer's own template, falling back to chatml when it has none."""
    if name is None:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.chat_template
        log.warning("tokenizer %s has no chat template; using chatml", tokenizer.name_or_path or type(tokenizer).__name__)
        name = "chatml"
    if name in TEMPLATES:
        if name == "chatml" and tokenizer.convert_tokens_to_ids("<|im_start|>") in (None, tokenizer.unk_token_id):
            log.warning("chatml template: <|im_start|> is not a token of this tokenizer; it will be split into pieces")
        return TEMPLATES[name]
    if "{%" in name or "{{" in name:
        return name
    raise ValueError(f"chat_template: expected one of {sorted(TEMPLATES)} or a Jinja string, got {name!r}")


def render(tokenizer, template: str, messages: list[dict], generation_prompt: bool = False) -> str:
    """``messages`` as one string (no tokenisation); a template error is a bad row."""
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )
    except (jinja2.TemplateError, ValueError) as err:
        raise BadRow(TEMPLATE, "messages", "messages the chat template accepts", str(err)) from None


def conversation_pieces(tokenizer, template: str, prompt: list[dict], completion: list[dict]) -> list[tuple[str, bool]]:
    """Render ``prompt + completion`` as ``[(text, trainable), ...]`` whose texts join to the full render.

    Each assistant message of ``completion`` is trainable from the end of the
    generation prompt that precedes it to the end of its own render.
    """
    conversation = prompt + completion
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i in range(len(prompt), len(conversation)):
        if conversation[i]["role"] != "assistant":
            continue
        head = render(tokenizer, template, conversation[:i], generation_prompt=True)
        upto = render(tokenizer, template, conversation[: i + 1])
        if not upto.startswith(done):
            raise BadRow(TEMPLATE, "messages", "a template that renders earlier turns the same once later turns follow")
        start = max(len(done), len(os.path.commonprefix([head, upto])))
        reply = upto[start:].rstrip()  # whitespace after the end-of-turn token is not trained on
        pieces += [(upto[len(done) : start], False), (reply, True), (upto[start + len(reply) :], False)]
        done = upto
    full = render(tokenizer, template, conversation)
    if not full.startswith(done):
        raise BadRow(TEMPLATE, "messages", "a template that renders earlier turns the same once later turns follow")
    pieces.append((full[len(done) :], False))
    return [(piece, trainable) for piece, trainable in pieces if piece]
