"""Stored answers: the target's generations kept without their features.

    python -m sglang_dspark.train.answers --data RUN/data --out recipes/answers/NAME.jsonl.gz

Generating the answers is almost all of a distillation's cost (about 90 answer
tokens/s on a 2-core CPU, against thousands of tokens/s for one teacher-forced
forward over prompt + answer), while the features take 6 KB per token and
live in a cache that a new machine does not have. An answers file keeps only
the answer token ids (about 2 bytes per token, gzip'd JSON lines), keyed by
the prompt's text, so it can be committed and grow from run to run; a later
distillation reads the features back out with one forward per batch
(:func:`read_out`) instead of generating again.

Format (``ANSWERS_FORMAT``): the first line is a header
``{"format", "settings"}`` with the generation settings that determine the
answers (:func:`answer_settings`); every further line is
``{"prompt": sha1(prompt text), "answer": [ids]}``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from sglang_dspark.train.target import target_forward

__all__ = ["ANSWERS_FORMAT", "AnswersError", "OtherSettingsError", "answer_settings", "export_answers", "load_answers",
           "prompt_key", "read_out"]

ANSWERS_FORMAT = "sglang-dspark-answers/1"
# The manifest entries that decide what the target answers.
_SETTING_KEYS = ("max_prompt_tokens", "max_new_tokens", "temperature", "top_p", "compute_dtype")


class AnswersError(ValueError):
    """An answers file is missing or malformed."""


class OtherSettingsError(AnswersError):
    """An answers file holds answers generated with other settings."""


def prompt_key(text: str) -> str:
    """The key of a prompt in an answers file."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def answer_settings(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a distillation manifest that determine its answers (target and generation)."""
    distill = manifest.get("distill", {})
    return {"target_fingerprint": manifest.get("target_fingerprint", ""),
            **{k: distill.get(k) for k in _SETTING_KEYS}}


def _read(path: Path) -> tuple[dict[str, Any], dict[str, list[int]]]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
    if not lines or lines[0].get("format") != ANSWERS_FORMAT:
        raise AnswersError(f"{path} is not an answers file ({ANSWERS_FORMAT})")
    entries = {}
    for line in lines[1:]:
        answer = line.get("answer")
        if not isinstance(line.get("prompt"), str) or not isinstance(answer, list) or not answer:
            raise AnswersError(f"{path}: malformed entry {str(line)[:80]}")
        entries[line["prompt"]] = [int(t) for t in answer]
    return lines[0]["settings"], entries


def load_answers(path: str | Path, settings: Mapping[str, Any]) -> dict[str, list[int]]:
    """``prompt_key -> answer ids`` from ``path``.

    Raises:
        AnswersError: the file is missing or malformed.
        OtherSettingsError: its answers were generated with other ``settings``
            (another target, length limit, sampling or dtype).
    """
    if not Path(path).is_file():
        raise AnswersError(f"answers file {path} does not exist")
    stored, entries = _read(Path(path))
    if dict(stored) != dict(settings):
        differ = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        raise OtherSettingsError(f"{path} holds answers generated with other settings ({differ})")
    return entries


def export_answers(data_dir: str | Path, path: str | Path) -> dict[str, int]:
    """Add the answers of every shard in ``data_dir`` to the answers file ``path`` (created if missing).

    Returns counts: answers already in the file, added, and in all.

    Raises:
        AnswersError: ``path`` holds answers made with other settings.
    """
    from sglang_dspark.train.distill import DistilledData

    data_dir, path = Path(data_dir), Path(path)
    data = DistilledData(data_dir)
    settings = answer_settings(data.manifest)
    entries = load_answers(path, settings) if path.is_file() else {}
    before = len(entries)
    texts = [json.loads(line)["text"] for line in (data_dir / "prompts.jsonl").read_text("utf-8").splitlines()]
    for i in range(len(data)):
        seq = data.get(i)
        answer = seq.input_ids[seq.loss_mask].tolist()
        entries.setdefault(prompt_key(texts[seq.prompt_index]), answer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # mtime=0: the same answers give the same bytes.
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
        handle.write((json.dumps({"format": ANSWERS_FORMAT, "settings": settings}) + "\n").encode())
        for key in sorted(entries):
            line = {"prompt": key, "answer": entries[key]}
            handle.write((json.dumps(line, separators=(",", ":")) + "\n").encode())
    os.replace(tmp, path)
    return {"before": before, "added": len(entries) - before, "total": len(entries)}


@torch.no_grad()
def read_out(model: Any, sequences: Sequence[Sequence[int]], layer_ids: Sequence[int],
             *, pad_id: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Teacher-forced features of whole sequences (prompt + stored answer), one forward per batch.

    The rows :func:`sglang_dspark.train.distill` records while generating:
    ``context_hidden [T, n*H]`` (the tapped layers' outputs, concatenated) and
    ``last_hidden [T, H]`` (the final norm's), the last row zero as there (a
    generated answer's last token is never fed back). Sequences are right-padded,
    so every real position sees exactly its own prefix.
    """
    device = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(list(ids))
        attention[row, : len(ids)] = 1
    feats = target_forward(model, input_ids.to(device), layer_ids, attention_mask=attention.to(device),
                           compute_logits=False)
    context, last = feats.context_hidden.cpu(), feats.last_hidden.cpu()
    out = []
    for row, ids in enumerate(sequences):
        n = len(ids)
        ctx_rows, last_rows = context[row, :n].clone(), last[row, :n].clone()
        ctx_rows[n - 1] = 0
        last_rows[n - 1] = 0
        out.append((ctx_rows, last_rows))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m sglang_dspark.train.answers --data DIR --out FILE``: add a run's answers to FILE."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sglang_dspark.train.answers",
                                     description="Add the answers of a distilled data directory to an answers file.")
    parser.add_argument("--data", required=True, help="distilled data directory (RUN/data)")
    parser.add_argument("--out", required=True, help="answers file (.jsonl.gz), created or extended")
    args = parser.parse_args(argv)
    try:
        counts = export_answers(args.data, args.out)
    except (AnswersError, FileNotFoundError) as exc:
        print(f"error: {exc}")
        return 1
    print(f"{args.out}: {counts['total']} answers ({counts['added']} added)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
