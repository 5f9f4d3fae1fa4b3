"""Canonical examples to token ids with a per-token completion mask, and the truncation policy.

A tokenised sequence is ``(input_ids[n], completion_mask[n])``, *unshifted*:
``completion_mask[i] = 1`` when token ``i`` is a completion token (trained on).
Its prompt is the part before the first completion token. The causal shift
happens later, once, in collate.py.
"""
from __future__ import annotations

import hashlib

from .templates import conversation_pieces, render, resolve_template
from .validation import EMPTY, TOO_LONG, BadRow


class Encoder:
    """Tokenises prompts and prompt + completion pairs with one tokenizer and chat template.

    Text (no template): ``[BOS if the tokenizer adds one] + prompt + completion + [EOS]``,
    each part tokenised on its own so the prompt's tokens never depend on the completion.
    Messages: rendered with the template (``templates.resolve_template(tokenizer,
    template)``, looked up on first use) and cut into pieces; the template
    supplies BOS and end-of-turn tokens.
    """

    def __init__(self, tokenizer, template: str | None = None):
        self.tokenizer, self.template_choice, self._template = tokenizer, template, None
        probe = tokenizer("a")["input_ids"]
        bos = tokenizer.bos_token_id
        self.bos = [bos] if bos is not None and probe and probe[0] == bos else []
        self.eos = tokenizer.eos_token_id

    @property
    def template(self) -> str:
        """The Jinja text of the chat template."""
        if self._template is None:
            self._template = resolve_template(self.tokenizer, self.template_choice)
        return self._template

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def sequence(self, prompt, completion) -> tuple[list[int], list[int]]:
        """``(input_ids[n], completion_mask[n])`` of the whole, untruncated sequence."""
        if isinstance(prompt, str):
            pieces, ids = [(prompt, False), (completion, True)], list(self.bos)
        else:
            pieces, ids = conversation_pieces(self.tokenizer, self.template, prompt, completion), []
        mask = [0] * len(ids)
        for piece_ids, (_, trainable) in zip(self._ids([p for p, _ in pieces]), pieces):
            ids += piece_ids
            mask += [int(trainable)] * len(piece_ids)
        if isinstance(prompt, str) and self.eos is not None and ids[-1] != self.eos:
            ids.append(self.eos)
            mask.append(1)
        if not any(mask):
            raise BadRow(EMPTY, "completion", "a completion of at least one token", completion)
        return ids, mask

    def steps(self, prompt, steps: list[str], separator: str) -> tuple[list[int], list[int], list[int]]:
        """``(input_ids[n], completion_mask[n], ends[len(steps)])`` of a stepwise reply: the generation prompt
        (``prompt``), then each step's tokens followed by the separator's (each tokenised on its own, as TRL's
        PRMTrainer); ``ends[i]`` is the position of step i's last token, where its label is read."""
        ids = self.prompt(prompt)
        mask, ends = [0] * len(ids), []
        separator_ids = self._ids([separator])[0] if separator else []
        for step_ids in self._ids(steps):
            ids += step_ids + separator_ids
            mask += [1] * (len(step_ids) + len(separator_ids))
            ends.append(len(ids) - 1)
        return ids, mask, ends

    def prompt(self, prompt) -> list[int]:
        """Token ids of a generation prompt (``[n]``); messages get the template's generation prompt."""
        if isinstance(prompt, str):
            return self.bos + self._ids([prompt])[0]
        return self._ids([render(self.tokenizer, self.template, prompt, generation_prompt=True)])[0]


def truncate(mask: list[int], max_length: int, max_prompt_length: int | None) -> tuple[int, int]:
    """The window ``[start, end)`` of a sequence to keep.

    The prompt (tokens before the first completion token) keeps its *last*
    ``max_prompt_length`` tokens (its start is dropped); then the completion
    keeps its *first* tokens so the window has at most ``max_length`` tokens
    (its tail is dropped). A prompt that leaves no room for one completion token
    raises ``BadRow`` (prompt too long).
    """
    prompt_length = mask.index(1)
    start = max(0, prompt_length - max_prompt_length) if max_prompt_length else 0
    if prompt_length - start >= max_length:
        raise BadRow(
            TOO_LONG, "prompt", f"a prompt shorter than max_length={max_length} tokens, or max_prompt_length set",
            f"{prompt_length - start} tokens",
        )
    return start, min(len(mask), start + max_length)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that changes token ids: the tokenizer's full definition and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    parts = (type(tokenizer).__name__, tokenizer.name_or_path, definition, tokenizer.bos_token_id, tokenizer.eos_token_id)
    return hashlib.sha256(repr(parts).encode()).hexdigest()
