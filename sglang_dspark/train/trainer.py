"""The drafter trainer: corpus -> self-distillation -> training -> STS -> DeepSpec checkpoint.

``run_training`` drives the whole pipeline into one output directory::

    <out>/data/                 distilled shards (resumable by shard)
    <out>/checkpoints/step_N/   drafter.safetensors (fp32) + state.pt
    <out>/drafter/              config.json, model.safetensors (DeepSpec names,
                                export dtype), sts_calibration.json,
                                training_log.json, recipe.json

Training (DeepSpec ``deepspec/trainer/base_trainer.py`` and
``dspark_trainer.py``, on one process):

* the drafter (DeepSpec layout, the target's family) is initialised
  N(0, ``init_std``) with norms at 1; it shares the target's embedding and LM
  head, which are frozen and never saved; every other parameter trains
  (layers, ``fc``, ``hidden_norm``, ``norm``, Markov head, confidence head);
* each optimizer step consumes ``batch_size`` training sequences in
  micro-batches of ``micro_batch_size``; each micro-batch samples
  ``num_anchors`` anchors per sequence (:func:`~sglang_dspark.train.blocks.sample_anchors`),
  runs all blocks in one pass, and adds ``loss / accumulation_steps``
  (:func:`~sglang_dspark.train.loss.dspark_loss`) to the gradients;
* AdamW (``lr``, ``adam_betas``, ``weight_decay``) on fp32 parameters, global
  grad-norm clipping at ``max_grad_norm``, learning rate with linear warm-up
  over ``warmup_ratio`` of the steps then cosine decay to 0 (DeepSpec
  ``CosineAnnealingWarmupLR``: ``lr * (s+1)/W`` for ``s < W``, then
  ``lr * (1 + cos(pi * (s-W) / (S-W))) / 2``);
* data order: an endless stream of per-epoch permutations of the training
  sequences, each seeded by ``(seed, epoch)``; step ``s`` takes stream items
  ``[s*batch, (s+1)*batch)``. Anchors of micro-batch ``m`` of step ``s`` come
  from a generator seeded by ``(seed, s, m)``. Both are functions of the
  step, so a resumed run sees exactly the data an uninterrupted run sees;
* checkpoints every ``checkpoint_every`` steps (and on SIGINT/SIGTERM, and at
  the end) hold the drafter, optimizer, scheduler, RNG states, the step (the
  data position) and the log; they are written to a temporary directory and
  renamed; the newest ``keep_checkpoints`` are kept.

At the end the STS temperatures are fitted on greedy drafts of held-out
sequences (:func:`~sglang_dspark.train.evaluate.heldout_greedy_drafts`) and
the drafter directory is written.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from sglang_dspark.algorithm.calibration import StsCalibration, fit_sts
from sglang_dspark.algorithm.config import DSparkConfig
from sglang_dspark.algorithm.draft_vocab import DraftVocab, draft_vocab_from_counts
from sglang_dspark.models.deepspec_drafter import DeepSpecDrafter, load_deepspec_drafter
from sglang_dspark.strict_json import write_json_atomic
from sglang_dspark.train.blocks import (
    build_blocks,
    drop_padding_anchors,
    sample_anchors,
    teacher_forced_outputs,
)
from sglang_dspark.train.corpus import build_corpus, corpus_summary, load_prompt_file
from sglang_dspark.train.distill import (
    DistilledData,
    eos_token_ids,
    distill,
    resolve_compute_dtype,
    target_fingerprint,
)
from sglang_dspark.train.evaluate import heldout_greedy_drafts
from sglang_dspark.train.export import DTYPES, drafter_config_dict, init_drafter_weights, save_drafter
from sglang_dspark.train.loss import dspark_loss
from sglang_dspark.train.recipe import Recipe, RecipeError
from sglang_dspark.train.target import load_target
from sglang_dspark.train.target_init import init_from_target_layer

__all__ = [
    "TrainError",
    "TrainResult",
    "Trainer",
    "cosine_warmup_lambda",
    "run_training",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
_EVAL_FILES = (
    "tests/data/eval_chat.jsonl",
    "tests/data/eval_code.jsonl",
    "sglang_dspark/data/eval_sharegpt.jsonl",
)


class TrainError(RuntimeError):
    """The output directory or the inputs do not fit the request."""


@dataclass(frozen=True)
class TrainResult:
    """Where things went and the headline numbers."""

    out_dir: Path
    drafter_dir: Path
    steps: int
    heldout_mean_committed: float
    sts: StsCalibration
    seconds: float


def grow_identity_layers(drafter: DeepSpecDrafter, first_new: int) -> None:
    """Zero the residual outputs (``o_proj``, ``down_proj``) of draft layers ``first_new..``.

    Layers added on top of a trained drafter then pass its residual stream
    through unchanged, so the grown drafter starts as the trained one (the
    same logits) and the new layers learn from there: their output
    projections get gradients at once, the rest once those are non-zero.
    """
    with torch.no_grad():
        for layer in drafter.layers[first_new:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()


def cosine_warmup_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """DeepSpec ``CosineAnnealingWarmupLR`` as a ``LambdaLR`` factor of step ``s`` (0-based)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))

    return factor


def _stream_seed(*parts: int) -> int:
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value * 6364136223846793005 + int(part) + 1442695040888963407) % (1 << 63)
    return value


def _atomic_json(path: Path, payload: Any) -> None:
    write_json_atomic(path, payload)


def _default_exclusions() -> list[str]:
    """Evaluation prompts the corpus must not overlap (when the repo's files exist)."""
    texts = []
    for rel in _EVAL_FILES:
        path = REPO_ROOT / rel
        if path.is_file():
            texts += [row["prompt"] for row in load_prompt_file(path)]
    return texts


class Trainer:
    """Trains one drafter for one target; see the module docstring.

    Args:
        recipe: the recipe.
        target: HF causal LM (frozen).
        tokenizer: its tokenizer.
        out_dir: output directory.
        seed: training seed (init, data order, anchors).
        device: ``"cpu"`` or ``"cuda"``.
        target_dir: where the target came from (fingerprint for the data).
        progress: tqdm bars.
        answers_file: stored answers to read out instead of generating
            (:mod:`sglang_dspark.train.answers`).
        init_from: a drafter directory of the recipe's architecture to start
            from (its weights and draft vocabulary) instead of a random init, so
            that training continues across machines from a shipped drafter. One
            with fewer draft layers grows: the recipe's extra layers go on top
            and start as the identity (:func:`grow_identity_layers`).
    """

    def __init__(
        self,
        recipe: Recipe,
        target: Any,
        tokenizer: Any,
        out_dir: str | Path,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        target_dir: str | Path | None = None,
        progress: bool = True,
        answers_file: str | Path | None = None,
        init_from: str | Path | None = None,
    ) -> None:
        self.recipe = recipe
        self.target = target
        self.tokenizer = tokenizer
        self.out_dir = Path(out_dir)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.target_dir = Path(target_dir) if target_dir is not None else None
        self.progress = progress
        self.answers_file = Path(answers_file) if answers_file is not None else None
        self.init_from = Path(init_from) if init_from is not None else None
        self.config_dict = drafter_config_dict(_target_config_dict(target.config), recipe)
        self.config = DSparkConfig.from_deepspec(self.config_dict)
        self.data_dir = self.out_dir / "data"
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.drafter_dir = self.out_dir / "drafter"
        self.log: list[dict[str, Any]] = []
        # Per-step stats not yet summarised into a log entry (checkpointed too,
        # so a resumed run logs exactly what an uninterrupted one does).
        self._window: list[dict[str, Any]] = []
        self._stop_requested = False
        self.compute_dtype = resolve_compute_dtype(recipe.train.compute_dtype, self.device)
        self.vocab_stats: dict[str, Any] = {}

    # ------------------------------------------------------------------ #
    # Data
    # ------------------------------------------------------------------ #
    def prepare_data(self, *, distill_missing: bool = True) -> DistilledData:
        """Build the corpus and distil it (skips finished shards).

        ``distill_missing=False`` uses the shards distilled so far (at least
        one) and leaves the rest for a later run.
        """
        r = self.recipe
        if not distill_missing:
            data = DistilledData(self.data_dir, max_shards=r.distill.max_shards)
            if len(data) == 0:
                raise TrainError(f"{self.data_dir} holds no distilled shard yet.")
            logger.info("training on the %d distilled shard(s) of %d", len(data.shard_names),
                        int(data.manifest.get("num_shards", 0)))
            return data
        prompts = build_corpus(
            seed=r.corpus.seed,
            num_chat=r.corpus.num_chat,
            num_code=r.corpus.num_code,
            heldout_fraction=r.corpus.heldout_fraction,
            max_chars=r.corpus.max_chars,
            exclude=_default_exclusions(),
            chat_source=r.corpus.chat_source,
        )
        logger.info("corpus: %d prompts %s", len(prompts), corpus_summary(prompts))
        fingerprint = target_fingerprint(self.target_dir) if self.target_dir else ""
        distill(
            self.target,
            self.tokenizer,
            prompts,
            self.data_dir,
            layer_ids=self.config.target_layer_ids,
            recipe=r.distill,
            fingerprint=fingerprint,
            seed=r.corpus.seed,
            progress=self.progress,
            answers_file=self.answers_file,
        )
        return DistilledData(self.data_dir, max_shards=r.distill.max_shards)

    # ------------------------------------------------------------------ #
    # Model and optimiser
    # ------------------------------------------------------------------ #
    def draft_vocab(self, data: DistilledData) -> DraftVocab | None:
        """The recipe's draft vocabulary: the most frequent tokens of the training answers, plus EOS."""
        size = self.recipe.drafter.draft_vocab_size
        if size is None:
            return None
        counts = data.answer_token_counts(self.config.vocab_size)
        eos = sorted(eos_token_ids(self.target, self.tokenizer))
        vocab = draft_vocab_from_counts(counts[0], size, always=torch.tensor(eos, dtype=torch.int64))
        self._record_vocab_stats(vocab, *counts)
        logger.info("draft vocabulary: %s", self.vocab_stats)
        return vocab

    def _record_vocab_stats(self, vocab: DraftVocab, train: torch.Tensor, heldout: torch.Tensor) -> None:
        """Size and coverage of ``vocab`` on the training and held-out answer-token counts."""
        self.vocab_stats = {
            "draft_vocab_size": vocab.size,
            "draft_vocab_train_coverage": round(vocab.coverage(train), 5),
            "draft_vocab_heldout_coverage": round(vocab.coverage(heldout), 5),
        }

    def warm_start(self, data: DistilledData) -> DeepSpecDrafter:
        """A trainable drafter holding ``init_from``'s weights and draft vocabulary.

        The recipe may have more draft layers than ``init_from``: those start
        as the identity on top of its layers, so the grown drafter drafts as
        ``init_from`` does at step 0.

        Raises:
            TrainError: the drafter's architecture is not the recipe's (other
                than by added draft layers).
        """
        source = load_deepspec_drafter(
            self.init_from, embed_tokens=self.target.get_input_embeddings(),
            lm_head=self.target.get_output_embeddings(), device=self.device, dtype=torch.float32,
            num_target_layers=int(self.target.config.num_hidden_layers),
        )
        ours, theirs = dataclasses.asdict(self.config), dataclasses.asdict(source.config)
        differ = sorted(k for k in ours if ours[k] != theirs.get(k) and k != "num_draft_layers")
        have, want = source.config.num_draft_layers, self.config.num_draft_layers
        if want < have:
            differ.append("num_draft_layers (a drafter cannot shrink)")
        if differ:
            raise TrainError(f"{self.init_from} is not a drafter of this recipe ({differ} differ).")
        vocab = source.draft_vocab
        if vocab is not None:
            self._record_vocab_stats(vocab, *data.answer_token_counts(self.config.vocab_size))
        drafter = self.build_drafter(vocab)
        missing, unexpected = drafter.load_state_dict(source.state_dict(), strict=False)
        new_layers = {f"layers.{i}." for i in range(have, want)}
        stray = list(unexpected) + [k for k in missing if not any(k.startswith(p) for p in new_layers)]
        if stray:
            raise TrainError(f"{self.init_from} does not fit this recipe's drafter: {sorted(stray)}")
        grow_identity_layers(drafter, have)
        logger.info("starting from %s%s %s", self.init_from,
                    f" (+{want - have} draft layer(s) on top, starting as the identity)" if want > have else "",
                    self.vocab_stats)
        return drafter

    def build_drafter(self, vocab: DraftVocab | None = None) -> DeepSpecDrafter:
        drafter = DeepSpecDrafter(self.config)
        init_drafter_weights(drafter, std=self.recipe.drafter.init_std, seed=self.seed)
        drafter = drafter.to(self.device, torch.float32)
        if self.recipe.drafter.init_from_target_layer is not None:
            init_from_target_layer(drafter, self.target, self.recipe.drafter.init_from_target_layer)
        if vocab is not None:
            drafter.set_draft_vocab(vocab)
        drafter.attach_target_modules(
            self.target.get_input_embeddings(), self.target.get_output_embeddings()
        )
        return drafter.train()

    def _optimizer(self, drafter: DeepSpecDrafter, total_steps: int):
        t = self.recipe.train
        params = [p for p in drafter.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            params, lr=t.lr, betas=tuple(t.adam_betas), weight_decay=t.weight_decay, eps=1e-8
        )
        warmup = int(t.warmup_ratio * total_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_warmup_lambda(total_steps, warmup))
        return opt, sched

    # ------------------------------------------------------------------ #
    # Checkpoints
    # ------------------------------------------------------------------ #
    def _checkpoints(self) -> list[Path]:
        if not self.ckpt_dir.is_dir():
            return []
        found = [p for p in self.ckpt_dir.glob("step_*") if (p / "state.pt").is_file()]
        return sorted(found, key=lambda p: int(p.name.split("_")[1]))

    def _save_checkpoint(self, step: int, drafter, opt, sched) -> Path:
        from safetensors.torch import save_file

        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        final = self.ckpt_dir / f"step_{step:06d}"
        tmp = self.ckpt_dir / f".step_{step:06d}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        state = {k: v.detach().cpu().contiguous() for k, v in drafter.state_dict().items()}
        save_file(state, str(tmp / "drafter.safetensors"))
        torch.save(
            {
                "step": step,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
                "log": self.log,
                "pending_window": self._window,
                "recipe": self.recipe.to_dict(),
                "seed": self.seed,
                "sequences_consumed": step * self.recipe.train.batch_size,
            },
            tmp / "state.pt",
        )
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        for old in self._checkpoints()[: -max(self.recipe.train.keep_checkpoints, 1)]:
            shutil.rmtree(old, ignore_errors=True)
        _atomic_json(self.out_dir / "training_log.json", {"log": self.log})
        logger.info("checkpoint %s", final)
        return final

    def _load_checkpoint(self, path: Path, drafter, opt, sched) -> int:
        from safetensors.torch import load_file

        state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        # Parsed, so that recipe fields added since (at their defaults) do not block a resume.
        try:
            saved = Recipe.from_dict(state.get("recipe") or {})
        except RecipeError:
            saved = None
        if saved != self.recipe or state.get("seed") != self.seed:
            raise TrainError(
                f"{path} was written with another recipe or seed; resume with the same "
                "--recipe and --seed, or use a fresh --out."
            )
        weights = load_file(str(path / "drafter.safetensors"))
        drafter.load_state_dict({k: v.to(self.device) for k, v in weights.items()})
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        self.log = list(state["log"])
        self._window = list(state.get("pending_window", []))
        return int(state["step"])

    # ------------------------------------------------------------------ #
    # Training
    # ------------------------------------------------------------------ #
    def _sequence_stream(self, train_ids: list[int], start: int, count: int) -> list[int]:
        n = len(train_ids)
        out = []
        cache: dict[int, list[int]] = {}
        for j in range(start, start + count):
            epoch = j // n
            if epoch not in cache:
                gen = torch.Generator().manual_seed(_stream_seed(self.seed, 17, epoch))
                cache[epoch] = torch.randperm(n, generator=gen).tolist()
            out.append(train_ids[cache[epoch][j % n]])
        return out

    def _collate(self, data: DistilledData, indices: list[int]):
        t = self.recipe.train
        seqs = [data.get(i, max_len=t.max_seq_len) for i in indices]
        width = max(len(s.input_ids) for s in seqs)
        nh = seqs[0].context_hidden.shape[-1]
        h = seqs[0].last_hidden.shape[-1]
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.bool)
        ctx = torch.zeros(len(seqs), width, nh)
        last = torch.zeros(len(seqs), width, h)
        for row, s in enumerate(seqs):
            n = len(s.input_ids)
            ids[row, :n] = s.input_ids
            mask[row, :n] = s.loss_mask
            ctx[row, :n] = s.context_hidden
            last[row, :n] = s.last_hidden
        return ids, mask, ctx, last

    def _micro_step(self, drafter, data, indices, gen, *, ce_phase: bool) -> dict[str, Any]:
        r = self.recipe
        ids, mask, ctx, last = self._collate(data, indices)
        anchors, keep = drop_padding_anchors(*sample_anchors(mask, r.train.num_anchors, generator=gen))
        blocks = build_blocks(
            ids, mask, ctx, anchors, keep,
            block_size=self.config.block_size, mask_token_id=self.config.mask_token_id,
            last_hidden=last,
        )
        autocast = self.compute_dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=autocast):
            out = teacher_forced_outputs(drafter, blocks, with_target=not ce_phase)
        return dspark_loss(
            out.draft_logits, out.target_logits, out.target_ids, out.eval_mask,
            out.confidence_logits,
            ce_alpha=1.0 if ce_phase else r.loss.ce_alpha, l1_alpha=r.loss.l1_alpha,
            confidence_alpha=r.loss.confidence_alpha, decay_gamma=r.loss.decay_gamma,
            keep=out.keep, draft_vocab=drafter.draft_vocab,
        )

    def _validate(self, drafter, data: DistilledData, heldout: list[int]) -> dict[str, Any]:
        t = self.recipe.train
        if not heldout or t.val_blocks <= 0:
            return {}
        seqs = (data.get(i, max_len=t.max_seq_len) for i in heldout)
        drafts = heldout_greedy_drafts(
            drafter, seqs, num_anchors=t.num_anchors, max_blocks=t.val_blocks,
            seed=_stream_seed(self.seed, 99),
        )
        if drafts.num_blocks == 0:
            return {}
        return {
            "val_blocks": drafts.num_blocks,
            "val_mean_committed": round(drafts.mean_committed(), 4),
            "val_accept_per_position": [round(x, 4) for x in drafts.per_position()],
        }

    def _request_stop(self, signum, _frame) -> None:
        logger.warning("signal %s: checkpointing after this step", signum)
        self._stop_requested = True

    def train(
        self,
        data: DistilledData,
        *,
        resume: bool = False,
        stop_after_steps: int | None = None,
    ) -> tuple[DeepSpecDrafter, int, bool]:
        """Run the optimisation loop.

        Args:
            data: distilled data.
            resume: continue from the newest checkpoint (required if any exists).
            stop_after_steps: checkpoint and return once this step is reached
                (simulates an interruption; used by tests).

        Returns:
            ``(drafter, last_step, finished)``.
        """
        from tqdm.auto import tqdm

        r, t = self.recipe, self.recipe.train
        train_ids = data.indices("train")
        heldout = data.indices("heldout")
        if not train_ids:
            raise TrainError(f"{self.data_dir} holds no training sequences.")
        if t.max_steps is not None:
            total = int(t.max_steps)
        else:
            total = max(1, math.ceil(t.epochs * len(train_ids) / t.batch_size))
        if self.init_from is not None:
            drafter = self.warm_start(data)
        else:
            drafter = self.build_drafter(self.draft_vocab(data))
        opt, sched = self._optimizer(drafter, total)
        ce_steps = round(r.loss.ce_only_ratio * total)
        step = 0
        existing = self._checkpoints()
        if existing and not resume:
            raise TrainError(
                f"{self.ckpt_dir} already holds checkpoints; pass --resume to continue or use "
                "a fresh --out."
            )
        if existing:
            step = self._load_checkpoint(existing[-1], drafter, opt, sched)
            logger.info("resumed from %s (step %d of %d)", existing[-1], step, total)
        params = [p for p in drafter.parameters() if p.requires_grad]
        accum = t.batch_size // t.micro_batch_size
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, self._request_stop)
            except ValueError:  # not the main thread
                pass
        bar = tqdm(total=total, initial=step, desc="training", unit="step",
                   disable=not self.progress)
        tic = time.perf_counter()
        slots = 0
        try:
            while step < total:
                batch = self._sequence_stream(train_ids, step * t.batch_size, t.batch_size)
                opt.zero_grad(set_to_none=True)
                parts = []
                for m in range(accum):
                    gen = torch.Generator().manual_seed(_stream_seed(self.seed, 23, step, m))
                    chunk = batch[m * t.micro_batch_size : (m + 1) * t.micro_batch_size]
                    out = self._micro_step(drafter, data, chunk, gen, ce_phase=step < ce_steps)
                    (out.loss / accum).backward()
                    parts.append(out)
                    slots += int(out.accept_count.sum())
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm))
                lr = opt.param_groups[0]["lr"]
                opt.step()
                sched.step()
                step += 1
                self._window.append(self._step_stats(parts, grad_norm, lr))
                bar.update(1)
                bar.set_postfix(loss=f"{self._window[-1]['loss']:.3f}",
                                tau=f"{self._window[-1]['tau']:.2f}")
                last = step == total
                if step % t.log_every == 0 or last:
                    entry = self._summarise(self._window, step, total,
                                            time.perf_counter() - tic, slots)
                    self._window, slots, tic = [], 0, time.perf_counter()
                    if step % t.checkpoint_every == 0 or last:
                        entry.update(self._validate(drafter, data, heldout))
                    self.log.append(entry)
                    logger.info("step %d/%d %s", step, total, _fmt(entry))
                elif step % t.checkpoint_every == 0:
                    self.log.append({"step": step, **self._validate(drafter, data, heldout)})
                stop = self._stop_requested or (
                    stop_after_steps is not None and step >= stop_after_steps
                )
                if step % t.checkpoint_every == 0 or last or stop:
                    self._save_checkpoint(step, drafter, opt, sched)
                if stop and not last:
                    return drafter, step, False
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return drafter, step, True

    @staticmethod
    def _step_stats(parts, grad_norm: float, lr: float) -> dict[str, Any]:
        n = len(parts)
        count = sum(p.accept_count for p in parts)
        rate = sum(p.accept_rate * p.accept_count for p in parts) / count.clamp_min(1.0)
        blocks = sum(float(p.num_blocks) for p in parts)
        tau = sum(float(p.tau) * float(p.num_blocks) for p in parts) / max(blocks, 1.0)
        return {
            "loss": sum(float(p.loss.detach()) for p in parts) / n,
            "ce": sum(float(p.ce) for p in parts) / n,
            "l1": sum(float(p.l1) for p in parts) / n,
            "confidence": sum(float(p.confidence) for p in parts) / n,
            "tau": tau,
            "accept_rate": rate.tolist(),
            "grad_norm": grad_norm,
            "lr": lr,
        }

    @staticmethod
    def _summarise(window, step: int, total: int, seconds: float, slots: int) -> dict[str, Any]:
        n = len(window)
        mean = {k: sum(w[k] for w in window) / n for k in ("loss", "ce", "l1", "confidence",
                                                          "tau", "grad_norm")}
        rates = [sum(w["accept_rate"][k] for w in window) / n
                 for k in range(len(window[0]["accept_rate"]))]
        return {
            "step": step,
            "total_steps": total,
            **{k: round(v, 5) for k, v in mean.items()},
            "accept_rate": [round(x, 4) for x in rates],
            "lr": window[-1]["lr"],
            "seconds_per_step": round(seconds / n, 3),
            "supervised_slots_per_second": round(slots / max(seconds, 1e-9), 1),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    # ------------------------------------------------------------------ #
    # Calibration and export
    # ------------------------------------------------------------------ #
    def calibrate(self, drafter, data: DistilledData) -> tuple[StsCalibration, dict[str, Any]]:
        """Fit STS on held-out greedy drafts (identity calibration if there are none)."""
        c, t = self.recipe.calibration, self.recipe.train
        heldout = data.indices("heldout")
        seqs = (data.get(i, max_len=t.max_seq_len) for i in heldout)
        drafts = heldout_greedy_drafts(
            drafter, seqs, num_anchors=t.num_anchors, max_blocks=c.max_blocks,
            seed=_stream_seed(self.seed, 31),
        )
        stats = {
            "heldout_blocks": drafts.num_blocks,
            "heldout_mean_committed": drafts.mean_committed(),
            "heldout_accept_per_position": drafts.per_position(),
        }
        if drafts.num_blocks == 0 or drafts.confidence_logits is None:
            logger.warning("no held-out drafts to calibrate on; writing identity STS")
            return StsCalibration.identity(self.config.block_size), stats
        sts = fit_sts(drafts.confidence_logits, drafts.accepted, n_bins=c.n_bins)
        return sts, stats

    def export(self, drafter, sts: StsCalibration, summary: dict[str, Any]) -> Path:
        """Write the drafter directory (atomically replaced)."""
        final = self.drafter_dir
        tmp = self.out_dir / f".drafter.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_drafter(tmp, drafter, self.config_dict, dtype=DTYPES[self.recipe.export.dtype])
        sts.to_json(tmp / "sts_calibration.json")
        _atomic_json(tmp / "training_log.json", {"summary": summary, "log": self.log})
        _atomic_json(tmp / "recipe.json", self.recipe.to_dict())
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        return final


_MODEL_KEYS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "vocab_size", "max_position_embeddings",
    "rms_norm_eps", "rope_parameters", "rope_theta", "rope_scaling", "attention_bias",
    "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
)


def _target_config_dict(config: Any) -> dict[str, Any]:
    """The target config as its ``config.json`` would hold it (no generic HF defaults)."""
    full = config.to_dict()
    out = config.to_diff_dict()
    for key in _MODEL_KEYS:
        if key in full and full[key] is not None:
            out.setdefault(key, full[key])
    return out


def _fmt(entry: dict[str, Any]) -> str:
    keys = ("loss", "ce", "l1", "confidence", "tau", "lr", "seconds_per_step",
            "val_mean_committed")
    return " ".join(f"{k}={entry[k]:.4g}" for k in keys if k in entry)


def run_training(
    target_dir: str | Path,
    recipe: Recipe,
    out_dir: str | Path,
    *,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    stop_after_steps: int | None = None,
    progress: bool = True,
    prepare_only: bool = False,
    distill_missing: bool = True,
    answers_file: str | Path | None = None,
    init_from: str | Path | None = None,
) -> TrainResult | None:
    """The whole pipeline (see the module docstring).

    ``distill_missing=False`` trains on the shards distilled so far.

    Returns:
        A :class:`TrainResult`, or ``None`` after ``prepare_only`` (data
        distilled, no training) or when ``stop_after_steps`` stopped the run
        early (a checkpoint was written; resume with ``resume=True``).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target, tokenizer = load_target(target_dir, device=device)
    trainer = Trainer(
        recipe, target, tokenizer, out_dir, seed=seed, device=device, target_dir=target_dir,
        progress=progress, answers_file=answers_file, init_from=init_from,
    )
    _atomic_json(out_dir / "run.json", {
        "target": str(Path(target_dir).resolve()), "seed": seed, "device": device,
        "recipe": recipe.to_dict(),
    })
    data = trainer.prepare_data(distill_missing=distill_missing)
    if prepare_only:
        return None
    drafter, step, finished = trainer.train(data, resume=resume, stop_after_steps=stop_after_steps)
    if not finished:
        return None
    sts, stats = trainer.calibrate(drafter, data)
    summary = {
        "steps": step,
        "seed": seed,
        "target": str(Path(target_dir).resolve()),
        "train_sequences": len(data.indices("train")),
        "heldout_sequences": len(data.indices("heldout")),
        # The shards trained on: with distill.max_shards the manifest may list more.
        "answer_tokens": data.num_answer_tokens,
        "sts": sts.to_dict(),
        **stats,
        **trainer.vocab_stats,
        "train_compute_dtype": str(trainer.compute_dtype).removeprefix("torch."),
        "drafter_parameters": sum(p.numel() for p in drafter.parameters()),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    drafter_dir = trainer.export(drafter, sts, summary)
    logger.info("drafter written to %s (held-out committed/step %.3f)", drafter_dir,
                stats["heldout_mean_committed"])
    return TrainResult(
        out_dir=out_dir,
        drafter_dir=drafter_dir,
        steps=step,
        heldout_mean_committed=float(stats["heldout_mean_committed"]),
        sts=sts,
        seconds=time.perf_counter() - start,
    )
