"""Prompt files for acceptance evaluation: JSONL parsing and chat-template encoding.

One JSON object per line, either ``{"prompt": "..."}`` (a single user turn)
or a ShareGPT-style ``{"conversations": [{"from": "human", "value": "..."},
...]}`` (OpenAI-style ``{"role": ..., "content": ...}`` turns are accepted
too). Trailing assistant turns are dropped: the model is asked to write the
reply to the last user turn, which is what the drafter is measured on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sglang_dspark.eval_acceptance.errors import EvalError

__all__ = ["EvalPrompt", "PromptFileError", "encode_prompt", "load_eval_prompts"]

_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant",
    "system": "system",
}


class PromptFileError(EvalError, ValueError):
    """The prompt file is missing, empty or has a malformed line."""


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt.

    Attributes:
        line: 1-based line number in the prompt file.
        messages: ``(role, content)`` turns ending with a user turn.
        chat: whether the entry is a conversation (always templated) rather
            than a plain ``prompt``.
    """

    line: int
    messages: tuple[tuple[str, str], ...]
    chat: bool = False

    def __post_init__(self) -> None:
        if self.line < 1:
            raise ValueError(f"line must be >= 1, got {self.line}.")
        if not self.messages:
            raise ValueError("an evaluation prompt needs at least one turn.")
        for role, content in self.messages:
            if role not in ("system", "user", "assistant") or not isinstance(content, str):
                raise ValueError(f"bad turn ({role!r}, {type(content).__name__}).")
        if self.messages[-1][0] != "user":
            raise ValueError("the last turn of an evaluation prompt must be a user turn.")

    @property
    def text(self) -> str:
        """The last user turn (for display)."""
        return self.messages[-1][1]


def _turns(where: str, turns: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(turns, list) or not turns:
        raise PromptFileError(f"{where}: 'conversations' must be a non-empty list of turns.")
    out: list[tuple[str, str]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise PromptFileError(f"{where}: turn {i} is not an object.")
        speaker = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        role = _ROLES.get(str(speaker).lower()) if speaker is not None else None
        if role is None or not isinstance(content, str):
            raise PromptFileError(
                f"{where}: turn {i} needs 'from'/'role' in {sorted(_ROLES)} and a string "
                "'value'/'content'."
            )
        out.append((role, content))
    while out and out[-1][0] == "assistant":
        out.pop()
    if not out or out[-1][0] != "user":
        raise PromptFileError(f"{where}: the conversation has no user turn to answer.")
    return tuple(out)


def load_eval_prompts(path: str | Path, *, limit: int | None = None) -> list[EvalPrompt]:
    """Parse a JSONL prompt file (see the module docstring).

    Args:
        path: the file.
        limit: keep only the first ``limit`` prompts.

    Raises:
        PromptFileError: missing file, no prompts, or a malformed line (with
            its line number).
    """
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist.")
    prompts: list[EvalPrompt] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if limit is not None and len(prompts) >= limit:
            break
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{where}: not valid JSON ({exc.msg}).") from exc
        if not isinstance(row, dict):
            raise PromptFileError(f"{where}: expected a JSON object, got {type(row).__name__}.")
        if "conversations" in row:
            prompts.append(EvalPrompt(line_no, _turns(where, row["conversations"]), chat=True))
        elif isinstance(row.get("prompt"), str):
            prompts.append(EvalPrompt(line_no, (("user", row["prompt"]),)))
        else:
            raise PromptFileError(
                f"{where}: expected a string 'prompt' or a 'conversations' list."
            )
    if not prompts:
        raise PromptFileError(f"{path} holds no prompts.")
    return prompts


def encode_prompt(tokenizer: Any, prompt: EvalPrompt, *, chat_template: bool = True) -> list[int]:
    """Token ids of ``prompt``: chat template with the generation prompt, or raw text.

    Plain ``prompt`` entries are encoded raw when ``chat_template`` is false
    or the tokenizer has no template; conversations always need one.
    """
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if prompt.chat and not has_template:
        raise PromptFileError(
            f"line {prompt.line}: a conversation needs a chat template and the tokenizer has none."
        )
    if prompt.chat or (chat_template and has_template):
        ids = tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in prompt.messages],
            add_generation_prompt=True, tokenize=True,
        )
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(t) for t in ids]
    return [int(t) for t in tokenizer(prompt.text, add_special_tokens=False)["input_ids"]]
