"""Self-distillation data: the target answers the corpus, then is read out teacher-forced.

For every corpus prompt (DeepSpec ``scripts/data/generate_train_data.py`` then
``scripts/data/prepare_target_cache.py``, on one CPU instead of SGLang servers
and GPUs):

1. **generate**: the chat template is applied (``add_generation_prompt``),
   prompts longer than ``max_prompt_tokens`` are skipped, and the target
   answers with batched ``generate`` (left padding, greedy by default or
   ``temperature``/``top_p`` sampling, at most ``max_new_tokens``; the answer
   ends at the first EOS, which is kept);
2. **teacher-forced read-out**: for every position of prompt + answer, the
   outputs of the decoder layers in ``target_layer_ids`` (concatenated,
   ``[T, n*H]``) and the final-norm output ``[T, H]``. They are recorded by
   forward hooks *during* generation (the prefill covers the prompt, each
   decode step one answer token, all conditioned on the true prefix), which
   is the teacher-forced forward DeepSpec runs separately, without paying
   for it twice (it cost a third of the distillation time on this CPU). The
   last token's row is never fed back and is stored as zeros; nothing reads
   it (anchors stop at ``T-2`` and slot ``T-1`` has no label).

What is stored for the target's output distribution: the **final-norm hidden
state**, not logits. The drafter shares the target's (frozen) LM head, so the
trainer recomputes the exact logits ``lm_head(last_hidden)`` when it needs
``p_t``, which is what DeepSpec does (it caches
``target_last_hidden_states`` and calls ``compute_logits``). This costs
``H`` numbers per token (576 for SmolLM2, 1.2 KB in bf16) instead of
``V = 49152`` fp16 log-probs (98 KB), and unlike a top-k cache it keeps the
whole distribution, so the L1 term and the confidence target are exact up to
the storage dtype (``hidden_dtype``, bf16 as in DeepSpec's cache).

Layout of ``<data dir>``:

* ``manifest.json``: format, target fingerprint, layer ids, sizes, the
  distillation settings and per-shard counts (updated as shards finish);
* ``prompts.jsonl``: the corpus (id, kind, source, split, text);
* ``shard_00000.safetensors`` ...: ``shard_size`` prompts each, tensors
  ``input_ids`` (int32 ``[N]``), ``loss_mask`` (uint8 ``[N]``, 1 on answer
  tokens), ``offsets`` (int64 ``[S+1]``), ``prompt_index`` (int64 ``[S]``),
  ``heldout`` (uint8 ``[S]``), ``context_hidden`` (``[N, n*H]``) and
  ``last_hidden`` (``[N, H]``) in ``hidden_dtype``.

Each shard is written to a temporary name and renamed, so an interrupted run
resumes at the first missing shard and never reads a partial one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from sglang_dspark.train.corpus import Prompt
from sglang_dspark.train.recipe import DistillRecipe
from sglang_dspark.train.target import target_backbone

__all__ = [
    "DISTILL_FORMAT",
    "DistillError",
    "DistilledData",
    "DistilledSequence",
    "distill",
    "eos_token_ids",
    "generation_model",
    "resolve_compute_dtype",
    "target_fingerprint",
]

logger = logging.getLogger(__name__)

DISTILL_FORMAT = "sglang-dspark-distill/1"
# Stored answers are read out in batches this small with SDPA: on a 2-core Xeon 1,170 tokens/s
# against 960 at 16 and 510 with eager attention at 16 (padding and [B, heads, T, T] scores grow
# with the batch; bench/RESULTS.md).
_READ_OUT_BATCH = 4
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class DistillError(RuntimeError):
    """The data directory belongs to another target/recipe or is corrupt."""


def target_fingerprint(target_dir: str | Path) -> str:
    """SHA-256 over the target's ``config.json`` and weight file sizes."""
    target_dir = Path(target_dir)
    digest = hashlib.sha256()
    config = target_dir / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for path in sorted(target_dir.glob("*.safetensors")):
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()


def _shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def _atomic_write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _chat_ids(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every end-of-sequence id of the target (generation config, model config, tokenizer)."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


@torch.no_grad()
def _generate(
    model: Any,
    prompts: list[list[int]],
    *,
    recipe: DistillRecipe,
    pad_id: int,
    eos_ids: set[int],
    seed: int,
    layer_ids: Sequence[int],
) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Answer a batch of prompts and read out the target's features on the way.

    Forward hooks on the tapped layers and the final norm record every
    forward of ``generate`` (the prefill over the prompt, then one position
    per new token), so prompt + answer features come without a second pass.
    The last answer token is never fed back, so its row is zero; no training
    quantity reads it (anchors end at ``T-2`` and slot ``T-1`` has no label).

    Returns:
        Per prompt: the answer ids (ending at the first EOS, inclusive),
        ``context_hidden [T, n*H]`` and ``last_hidden [T, H]`` for the
        sequence prompt + answer (``T`` rows).
    """
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention[row, width - len(ids) :] = 1
    kwargs: dict[str, Any] = dict(
        max_new_tokens=recipe.max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=sorted(eos_ids),
    )
    if recipe.cache_implementation == "static":
        kwargs["cache_implementation"] = "static"
    if recipe.temperature > 0:
        torch.manual_seed(seed)
        kwargs.update(do_sample=True, temperature=recipe.temperature, top_p=recipe.top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    keys = [f"layer:{i}" for i in layer_ids] + ["last"]
    steps: dict[str, list[torch.Tensor]] = {k: [] for k in keys}

    def recorder(key: str):
        def fn(_module, _inputs, output):
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            steps[key].append(tensor.detach().cpu())

        return fn

    backbone = target_backbone(model)
    handles = []
    for layer_id in layer_ids:
        module = backbone.embed_tokens if layer_id == -1 else backbone.layers[layer_id]
        handles.append(module.register_forward_hook(recorder(f"layer:{layer_id}")))
    handles.append(backbone.norm.register_forward_hook(recorder("last")))
    try:
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs
        )
    finally:
        for handle in handles:
            handle.remove()
    new_tokens = out.shape[1] - width
    feats = {k: torch.cat(v, dim=1) for k, v in steps.items()}
    expected = width + max(new_tokens - 1, 0)
    for key, value in feats.items():
        if value.shape[1] != expected:
            raise DistillError(
                f"generate ran {value.shape[1]} positions through {key}, expected {expected}; "
                "this transformers version does not decode one token per forward."
            )
    context = torch.cat([feats[f"layer:{i}"] for i in layer_ids], dim=-1)
    last = feats["last"]
    results = []
    for row, ids in enumerate(prompts):
        answer = []
        for token in out[row, width:].tolist():
            answer.append(int(token))
            if token in eos_ids:
                break
        total = len(ids) + len(answer)
        pad = width - len(ids)
        ctx_rows = torch.zeros(total, context.shape[-1], dtype=context.dtype)
        last_rows = torch.zeros(total, last.shape[-1], dtype=last.dtype)
        ctx_rows[: total - 1] = context[row, pad : pad + total - 1]
        last_rows[: total - 1] = last[row, pad : pad + total - 1]
        results.append((answer, ctx_rows, last_rows))
    return results


def resolve_compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """The generation dtype a recipe's ``compute_dtype`` means on ``device``."""
    if name == "auto":
        from sglang_dspark.cpu_features import has_fast_bf16

        fast = device.type == "cuda" or (device.type == "cpu" and has_fast_bf16())
        return torch.bfloat16 if fast else torch.float32
    return _DTYPES[name]


def generation_model(model: Any, dtype: torch.dtype, attn_implementation: str) -> Any:
    """``model`` itself, or a copy in ``dtype`` with ``attn_implementation`` for generation."""
    current = getattr(model.config, "_attn_implementation", None)
    if next(model.parameters()).dtype == dtype and current == attn_implementation:
        return model
    gen = copy.deepcopy(model).to(dtype)
    gen.set_attn_implementation(attn_implementation)
    return gen.eval()


def _batches(items: list, size: int) -> list[list]:
    return [items[b : b + size] for b in range(0, len(items), size)]


def _write_shard(path: Path, rows: list[dict[str, Any]], hidden_dtype: torch.dtype) -> dict:
    from safetensors.torch import save_file

    lengths = [len(r["ids"]) for r in rows]
    offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
    if rows:
        offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    tensors = {
        "input_ids": torch.tensor([t for r in rows for t in r["ids"]], dtype=torch.int32),
        "loss_mask": torch.tensor([m for r in rows for m in r["mask"]], dtype=torch.uint8),
        "offsets": offsets,
        "prompt_index": torch.tensor([r["prompt_index"] for r in rows], dtype=torch.int64),
        "heldout": torch.tensor([r["heldout"] for r in rows], dtype=torch.uint8),
    }
    if rows:
        tensors["context_hidden"] = torch.cat([r["ctx"] for r in rows]).to(hidden_dtype)
        tensors["last_hidden"] = torch.cat([r["last"] for r in rows]).to(hidden_dtype)
    else:
        tensors["context_hidden"] = torch.zeros(0, 1, dtype=hidden_dtype)
        tensors["last_hidden"] = torch.zeros(0, 1, dtype=hidden_dtype)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"format": DISTILL_FORMAT, "num_sequences": str(len(rows))})
    os.replace(tmp, path)
    return {
        "num_sequences": len(rows),
        "num_tokens": int(offsets[-1]),
        "num_answer_tokens": int(tensors["loss_mask"].sum()),
        "num_truncated": sum(1 for r in rows if not r["ended"]),
    }


def distill(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    out_dir: str | Path,
    *,
    layer_ids: Sequence[int],
    recipe: DistillRecipe,
    fingerprint: str = "",
    seed: int = 0,
    progress: bool = True,
    answers_file: str | Path | None = None,
) -> dict[str, Any]:
    """Generate answers and record teacher-forced features into ``out_dir`` (resumable).

    Prompts whose answer ``answers_file`` holds (:mod:`sglang_dspark.train.answers`)
    are not generated again: their features are read out by one forward. A file of
    answers generated with other settings is not used (a warning says so).

    Args:
        model: the target (HF causal LM, eval mode).
        tokenizer: its tokenizer (with a chat template).
        prompts: the corpus, in order; shard ``i`` holds prompts
            ``[i*shard_size, (i+1)*shard_size)``.
        out_dir: data directory (created).
        layer_ids: ``target_layer_ids`` to record.
        recipe: distillation settings.
        fingerprint: identifies the target (:func:`target_fingerprint`).
        seed: sampling seed (``temperature > 0`` only).
        progress: show a tqdm bar.
        answers_file: stored answers of this target and these settings.

    Returns:
        The final manifest dict.

    Raises:
        DistillError: ``out_dir`` holds data for another target, corpus or setting.
        AnswersError: ``answers_file`` is missing or malformed (one made with other
            settings is ignored with a warning).
    """
    from sglang_dspark.train.answers import OtherSettingsError, answer_settings, load_answers, prompt_key, read_out
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hidden_dtype = _DTYPES[recipe.hidden_dtype]
    compute_dtype = resolve_compute_dtype(recipe.compute_dtype, next(model.parameters()).device)
    backbone_cfg = model.config
    corpus_digest = hashlib.sha256("\n".join(p.id for p in prompts).encode()).hexdigest()
    spec = {
        "format": DISTILL_FORMAT,
        "target_fingerprint": fingerprint,
        "target_layer_ids": [int(i) for i in layer_ids],
        "hidden_size": int(backbone_cfg.hidden_size),
        "vocab_size": int(backbone_cfg.vocab_size),
        "num_prompts": len(prompts),
        "corpus_sha256": corpus_digest,
        "seed": int(seed),
        "distill": {
            k: getattr(recipe, k)
            for k in (
                "max_prompt_tokens", "max_new_tokens", "temperature", "top_p", "shard_size",
                "hidden_dtype", "attn_implementation", "cache_implementation",
            )
        },
    }
    spec["distill"]["compute_dtype"] = str(compute_dtype).removeprefix("torch.")
    manifest_path = out_dir / "manifest.json"
    manifest: dict[str, Any]
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if isinstance(manifest.get("distill"), dict):  # data made before the option existed
            manifest["distill"].setdefault("cache_implementation", "dynamic")
        mismatched = [k for k, v in spec.items() if manifest.get(k) != v]
        if mismatched:
            raise DistillError(
                f"{out_dir} holds distillation data made with other settings ({mismatched}); "
                "use a fresh output directory."
            )
    else:
        manifest = dict(spec, shards={}, complete=False)
        with open(out_dir / "prompts.jsonl", "w", encoding="utf-8") as handle:
            for prompt in prompts:
                handle.write(json.dumps(prompt.to_json()) + "\n")
        _atomic_write_json(manifest_path, manifest)

    stored: dict[str, list[int]] = {}
    if answers_file:
        try:
            stored = load_answers(answers_file, answer_settings(spec))
        except OtherSettingsError as exc:  # bf16 answers on a CPU that generates in fp32, say
            logger.warning("%s; generating every answer", exc)
    shard_size = recipe.shard_size
    num_shards = (len(prompts) + shard_size - 1) // shard_size
    manifest["num_shards"] = num_shards
    wanted = num_shards if recipe.max_shards is None else min(num_shards, recipe.max_shards)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos_ids = eos_token_ids(model, tokenizer)
    todo = [i for i in range(wanted) if not (out_dir / _shard_name(i)).is_file()]
    reader = generation_model(model, compute_dtype, "sdpa") if todo and stored else None
    if todo:
        model = generation_model(model, compute_dtype, recipe.attn_implementation)
    done_tokens = sum(s.get("num_answer_tokens", 0) for s in manifest.get("shards", {}).values())
    bar = tqdm(total=wanted, initial=wanted - len(todo), desc="distilling", unit="shard",
               disable=not progress)
    start = time.perf_counter()
    new_tokens = 0
    for shard in todo:
        chunk = list(enumerate(prompts))[shard * shard_size : (shard + 1) * shard_size]
        items = []
        for index, prompt in chunk:
            ids = _chat_ids(tokenizer, prompt.text)
            if len(ids) <= recipe.max_prompt_tokens:
                items.append((index, prompt, ids))
        known = [(i, p, ids, stored[prompt_key(p.text)]) for i, p, ids in items if prompt_key(p.text) in stored]
        items = [item for item in items if prompt_key(item[1].text) not in stored]
        # Longest first: batches of similar lengths waste less padding.
        items.sort(key=lambda item: (-len(item[2]), item[0]))
        known.sort(key=lambda item: (-len(item[2]) - len(item[3]), item[0]))
        batches = [(batch, None) for batch in _batches(known, _READ_OUT_BATCH)]
        batches += [(batch, b) for b, batch in enumerate(_batches(items, recipe.batch_size))]
        rows = []
        for batch, b in batches:
            if b is None:  # stored answers: read the features out
                feats = read_out(reader, [ids + answer for _, _, ids, answer in batch], layer_ids, pad_id=pad_id)
                results = [(answer, ctx, last) for (*_, answer), (ctx, last) in zip(batch, feats)]
                batch = [item[:3] for item in batch]
            else:
                results = _generate(
                    model,
                    [ids for _, _, ids in batch],
                    recipe=recipe,
                    pad_id=pad_id,
                    eos_ids=eos_ids,
                    seed=seed * 1_000_003 + shard * 1009 + b * recipe.batch_size,
                    layer_ids=layer_ids,
                )
            for (index, prompt, ids), (answer, ctx, last) in zip(batch, results):
                if len(answer) < 2:
                    continue
                rows.append(
                    {
                        "ids": ids + answer,
                        "mask": [0] * len(ids) + [1] * len(answer),
                        "prompt_index": index,
                        "heldout": int(prompt.split == "heldout"),
                        "ctx": ctx,
                        "last": last,
                        "ended": answer[-1] in eos_ids,
                    }
                )
                new_tokens += len(answer) if b is not None else 0
        rows.sort(key=lambda r: r["prompt_index"])
        stats = _write_shard(out_dir / _shard_name(shard), rows, hidden_dtype)
        stats["num_from_answers"] = len(known)
        manifest.setdefault("shards", {})[_shard_name(shard)] = stats
        _atomic_write_json(manifest_path, manifest)
        elapsed = time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(tok_s=f"{new_tokens / max(elapsed, 1e-9):.1f}",
                        tokens=done_tokens + new_tokens)
        logger.info(
            "shard %d/%d: %d sequences (%d from stored answers), %d answer tokens (%.1f generated tok/s)",
            shard + 1, wanted, stats["num_sequences"], len(known), stats["num_answer_tokens"],
            new_tokens / max(elapsed, 1e-9),
        )
    bar.close()
    manifest["complete"] = all((out_dir / _shard_name(i)).is_file() for i in range(num_shards))
    _atomic_write_json(manifest_path, manifest)
    return manifest


# ---------------------------------------------------------------------- #
# Reading
# ---------------------------------------------------------------------- #
@dataclass(frozen=True)
class DistilledSequence:
    """One distilled sequence (prompt + answer).

    Attributes:
        input_ids: ``[T]`` int64.
        loss_mask: ``[T]`` bool, true on answer tokens.
        context_hidden: ``[T, n*H]`` float32 target features.
        last_hidden: ``[T, H]`` float32 final-norm target states.
        prompt_index: index of the prompt in the corpus.
    """

    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    context_hidden: torch.Tensor
    last_hidden: torch.Tensor
    prompt_index: int


class DistilledData:
    """Random access to the sequences of a data directory (memory-mapped shards)."""

    def __init__(self, data_dir: str | Path, *, max_shards: int | None = None) -> None:
        """Open ``data_dir``; with ``max_shards`` only shards ``0 .. max_shards - 1`` are read."""
        from safetensors import safe_open

        self.data_dir = Path(data_dir)
        manifest_path = self.data_dir / "manifest.json"
        if not manifest_path.is_file():
            raise DistillError(f"{self.data_dir} has no manifest.json; run the distillation first.")
        self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if self.manifest.get("format") != DISTILL_FORMAT:
            raise DistillError(f"{manifest_path}: unknown format {self.manifest.get('format')!r}.")
        self._handles = []
        self.shard_names: list[str] = []
        self._index: list[tuple[int, int]] = []  # (shard, row)
        self._offsets: list[torch.Tensor] = []
        self._ids: list[torch.Tensor] = []
        self._mask: list[torch.Tensor] = []
        self._prompt: list[torch.Tensor] = []
        heldout: list[bool] = []
        lengths: list[int] = []
        num_shards = int(self.manifest.get("num_shards", 0))
        if max_shards is not None:
            num_shards = min(num_shards, max_shards)
        for shard in range(num_shards):
            path = self.data_dir / _shard_name(shard)
            if not path.is_file():
                continue
            handle = safe_open(str(path), framework="pt")
            self._handles.append(handle)
            self.shard_names.append(path.name)
            offsets = handle.get_tensor("offsets")
            self._offsets.append(offsets)
            self._ids.append(handle.get_tensor("input_ids").long())
            self._mask.append(handle.get_tensor("loss_mask").bool())
            self._prompt.append(handle.get_tensor("prompt_index"))
            flags = handle.get_tensor("heldout").bool().tolist()
            for row in range(len(offsets) - 1):
                self._index.append((len(self._handles) - 1, row))
                heldout.append(flags[row])
                lengths.append(int(offsets[row + 1] - offsets[row]))
        self.heldout = torch.tensor(heldout, dtype=torch.bool)
        self.lengths = torch.tensor(lengths, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def num_answer_tokens(self) -> int:
        """Answer tokens in the shards read (all splits)."""
        return int(sum(int(mask.sum()) for mask in self._mask))

    def answer_token_counts(self, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[V]`` counts of answer tokens in the train split and in the held-out split."""
        counts = {False: torch.zeros(vocab_size, dtype=torch.int64),
                  True: torch.zeros(vocab_size, dtype=torch.int64)}
        for i, (shard, row) in enumerate(self._index):
            start, end = int(self._offsets[shard][row]), int(self._offsets[shard][row + 1])
            ids = self._ids[shard][start:end][self._mask[shard][start:end]]
            counts[bool(self.heldout[i])] += torch.bincount(ids, minlength=vocab_size)[:vocab_size]
        return counts[False], counts[True]

    def indices(self, split: str) -> list[int]:
        """Sequence indices of ``split`` (``"train"`` or ``"heldout"``)."""
        want = split == "heldout"
        return [i for i in range(len(self)) if bool(self.heldout[i]) == want]

    def get(self, index: int, *, max_len: int | None = None) -> DistilledSequence:
        """Sequence ``index`` (cut to ``max_len`` tokens if given)."""
        shard, row = self._index[index]
        start = int(self._offsets[shard][row])
        end = int(self._offsets[shard][row + 1])
        if max_len is not None:
            end = min(end, start + max_len)
        handle = self._handles[shard]
        return DistilledSequence(
            input_ids=self._ids[shard][start:end],
            loss_mask=self._mask[shard][start:end],
            context_hidden=handle.get_slice("context_hidden")[start:end].float(),
            last_hidden=handle.get_slice("last_hidden")[start:end].float(),
            prompt_index=int(self._prompt[shard][row]),
        )
