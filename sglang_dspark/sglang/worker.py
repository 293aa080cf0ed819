"""The DSPARK speculative worker SGLang's scheduler drives.

One decode step, per batch:

0. ask the speculation gate whether this batch size currently commits more
   tokens per second speculating or decoding plainly (measured, see
   ``speculation_gate.py``); a plain step skips 1-2 and verifies no drafts;
1. draft a block from each request's anchor (the last committed token, not
   yet in the KV cache) with the drafter, whose context K/V holds the target
   hidden states of every committed token (``PagedDrafterContext``);
2. choose per-request verify lengths with the prefix scheduler (confidence
   head, corrected online by measured acceptance, x SPS table);
3. run one TARGET_VERIFY forward of the target over ``[anchor, drafts...]``;
4. accept losslessly (``verify_block``) and write the accepted tokens' target
   hidden states into the drafter context.

The KV slots a step writes were reserved by the scheduler
(``DFlashDraftInputV2.prepare_for_decode``); rejected slots stay reserved and
are overwritten by the next step or released with the request, so the worker
never calls the allocator.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from sglang.srt.layers.logprob_processor import compute_spec_logprobs
from sglang.srt.managers.utils import GenerationBatchResult
from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode
from sglang.srt.runtime_context import get_spec
from sglang.srt.speculative.base_spec_worker import BaseSpecWorker
from sglang.srt.speculative.dflash_info import DFlashVerifyInput
from sglang.srt.speculative.draft_worker_common import make_draft_input_v2

from sglang_dspark.algorithm.acceptance_guard import AcceptanceGuard
from sglang_dspark.algorithm.block_drafting import DraftBlock
from sglang_dspark.algorithm.calibration import StsCalibration
from sglang_dspark.algorithm.confidence_corrector import ConfidenceCorrector, ConfidenceCorrectorConfig
from sglang_dspark.algorithm.prefix_scheduler import schedule_prefixes
from sglang_dspark.algorithm.sampling import SamplingParams, logits_to_probs, sample_from_probs
from sglang_dspark.algorithm.seeded_noise import (
    DRAFT_STREAM,
    PREFILL_STREAM,
    VERIFY_STREAM,
    uniforms_for_batch,
)
from sglang_dspark.algorithm.speculation_gate import Mode, SpeculationGate, batch_bucket, bucket_label
from sglang_dspark.algorithm.sps_table import SpsTable, default_sps_table
from sglang_dspark.algorithm.step_cost import OnlineStepCost, StepCostConfig
from sglang_dspark.algorithm.verify import verify_block
from sglang_dspark.models.deepspec_drafter import DeepSpecDrafter, load_deepspec_drafter
from sglang_dspark.models.drafter_tensor_parallel import DrafterTPShard, shard_drafter, unshardable_reason
from sglang_dspark.models.paged_context import PagedDrafterContext
from sglang_dspark.sglang.fault_injection import DraftFaultInjector
from sglang_dspark.sglang.sps_files import load_sps_table
from sglang_dspark.sglang.step_phases import StepPhases
from sglang_dspark.sglang.verify_batch import VerifyLayout, plan_verify_layout, ragged_supported
from sglang_dspark.sglang.verify_logits import (
    DraftConstraints,
    has_logit_processing,
    plain_rows,
    process_verify_logits,
)
from sglang_dspark.sglang.tp_sync import broadcast_from_first_rank, full_vocab_weight, tp_rank, tp_world_size

logger = logging.getLogger(__name__)

#: Stop speculating for the rest of the server's life when acceptance collapses.
STOP_ON_COLLAPSE_ENV = "SGLANG_DSPARK_STOP_ON_COLLAPSE"
#: Rows of steps that drafted nothing are projected into the drafter context
#: together, once this many are queued (or the next drafting step needs them):
#: on the 2-core box one projection of 32 rows took 1.3 ms, one of 2 rows 0.5-0.8 ms.
DEFERRED_CONTEXT_ROWS = 32
#: "0" turns off the adaptive parts (speculation gate, online confidence correction, online step cost).
ADAPTIVE_ENV = "SGLANG_DSPARK_ADAPTIVE"


class _SharedWeight(nn.Module):
    """The target's embedding or LM head as a plain module over its weight.

    ``compute_dtype``: the LM head multiplies in that dtype from a copy of the
    weight made on first use (outputs stay in the weight's dtype), e.g.
    bfloat16 on a CPU with bf16 instructions, where the drafter's
    vocabulary-sized GEMM is several times faster. Drafts change a little;
    what is committed does not (the target verifies every draft). A drafter
    with a reduced draft vocabulary copies only its rows, in ``compute_dtype``
    (:meth:`DeepSpecDrafter.head_logits`), and never makes the whole copy.
    """

    def __init__(self, weight: torch.Tensor, kind: str, compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.weight = weight
        self.kind = kind
        self.compute_dtype = None if compute_dtype == weight.dtype or kind != "head" else compute_dtype
        self._compute_weight: torch.Tensor | None = None

    @property
    def compute_weight(self) -> torch.Tensor | None:
        """The weight in ``compute_dtype`` (made on first access), or ``None``."""
        if self.compute_dtype is not None and self._compute_weight is None:
            self._compute_weight = self.weight.to(self.compute_dtype)
        return self._compute_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "embed":
            return F.embedding(x, self.weight)
        if self.compute_dtype is not None:
            weight = self.compute_weight
            return F.linear(x.to(weight.dtype), weight).to(self.weight.dtype)
        return F.linear(x, self.weight)


def drafter_head_dtype(device: torch.device, weight_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype the drafter's LM head multiplies in: bfloat16 for an fp32 head on a CPU with bf16 instructions."""
    from sglang_dspark.cpu_features import has_fast_bf16

    if device.type == "cpu" and weight_dtype == torch.float32 and has_fast_bf16():
        return torch.bfloat16
    return None


def _target_shared_modules(
    model: nn.Module, vocab_size: int, head_dtype: torch.dtype | None = None
) -> tuple[nn.Module, nn.Module]:
    """The target's embedding and LM head, without SGLang's vocabulary padding rows."""
    body = getattr(model, "model", model)
    embed = getattr(body, "embed_tokens", None)
    head = getattr(model, "lm_head", None)
    if embed is None or head is None or not hasattr(head, "weight"):
        raise RuntimeError(
            f"{type(model).__name__} exposes no model.embed_tokens / lm_head.weight; "
            "DSPARK drafters share the target's embedding and LM head."
        )
    # Under tensor parallelism both are vocabulary-sharded: every rank gathers the full tables.
    return (
        _SharedWeight(full_vocab_weight(embed, vocab_size), "embed"),
        _SharedWeight(full_vocab_weight(head, vocab_size), "head", head_dtype),
    )


def _shard_for_tensor_parallelism(drafter: DeepSpecDrafter) -> DeepSpecDrafter:
    """Split the drafter's layers over SGLang's TP group like the target's (replicated when they cannot split)."""
    world = tp_world_size()
    if world == 1:
        return drafter
    reason = unshardable_reason(drafter.config, world)
    if reason is not None:
        logger.warning("DSPARK drafter replicated on every TP rank: %s.", reason)
        return drafter
    from sglang.srt.distributed import tensor_model_parallel_all_reduce

    shard_drafter(drafter, DrafterTPShard(drafter.config, tp_rank(), world), tensor_model_parallel_all_reduce)
    logger.info(
        "DSPARK drafter layers split over %d TP ranks: %d query / %d key-value heads per rank",
        world,
        drafter.layers[0].self_attn.num_heads if len(drafter.layers) else 0,
        drafter.kv_heads_per_rank,
    )
    return drafter


@dataclass(frozen=True)
class _StepTiming:
    """Seconds spent in each phase of one decode step."""

    draft: float
    schedule: float
    prepare: float
    forward: float
    finish: float

    @property
    def total(self) -> float:
        return self.draft + self.schedule + self.prepare + self.forward + self.finish

    @property
    def overhead(self) -> float:
        """Prefix scheduling plus bookkeeping: neither drafting nor the target forward.

        ``finish`` includes verification (a few small ops over ``[B, width]``)
        and writing the drafter context; it is counted as overhead so that the
        figure is an upper bound.
        """
        return self.schedule + self.prepare + self.finish


@dataclass
class StepStats:
    """Running counters of the worker, exported in logs and internal state."""

    decode_steps: int = 0  # worker steps (each verifies the whole batch)
    verify_steps: int = 0  # request-steps
    committed_tokens: int = 0
    verified_tokens: int = 0
    fallback_steps: int = 0
    plain_steps: int = 0  # request-steps the speculation gate ran without drafting
    forward_rows: int = 0
    padded_rows: int = 0
    draft_seconds: float = 0.0
    schedule_seconds: float = 0.0
    verify_seconds: float = 0.0
    overhead_seconds: float = 0.0
    step_seconds: float = 0.0
    accept_histogram: list[int] = field(default_factory=list)

    def add_timing(self, timing: _StepTiming) -> None:
        self.decode_steps += 1
        self.draft_seconds += timing.draft
        self.schedule_seconds += timing.schedule
        self.verify_seconds += timing.forward
        self.overhead_seconds += timing.overhead
        self.step_seconds += timing.total

    def record_layout(self, layout: VerifyLayout) -> None:
        """Rows the target forward ran vs. rows a batch-uniform verify would have run."""
        self.forward_rows += layout.num_rows
        self.padded_rows += len(layout.counts_cpu) * layout.width

    def record(self, accept_lens: list[int], verify_lens: list[int], width: int) -> None:
        if len(self.accept_histogram) < width + 1:
            self.accept_histogram.extend([0] * (width + 1 - len(self.accept_histogram)))
        for n in accept_lens:
            self.accept_histogram[n] += 1
        self.verify_steps += len(accept_lens)
        self.committed_tokens += sum(accept_lens)
        self.verified_tokens += sum(v + 1 for v in verify_lens)

    @property
    def mean_accept_length(self) -> float:
        return self.committed_tokens / self.verify_steps if self.verify_steps else 0.0


class DSparkWorker(BaseSpecWorker):
    """sglang-dspark's worker for ``--speculative-algorithm DSPARK``."""

    def __init__(self, server_args, gpu_id, nccl_port, target_worker) -> None:
        super().__init__()
        self.server_args = server_args
        self._target_worker = target_worker
        self._draft_worker = None
        self.model_runner = target_worker.model_runner
        self.device = torch.device(self.model_runner.device)
        spec = get_spec()
        self.verify_width = int(spec.speculative_num_draft_tokens)
        self.drafter = self._load_drafter(spec.speculative_draft_model_path)
        self.block_size = self.drafter.config.block_size
        if self.verify_width != self.block_size + 1:
            raise RuntimeError(
                f"speculative_num_draft_tokens={self.verify_width} but the drafter's block "
                f"size is {self.block_size}; argument resolution did not run sglang-dspark's "
                "DSPARK checks (is the plugin loaded?)."
            )
        self.sps_table = self._load_sps_table(spec.speculative_dspark_sps_table_path)
        self.sts_temperatures = self._load_sts(spec.speculative_dspark_confidence_sts_path)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(getattr(server_args, "random_seed", None) or 0))
        self.context: PagedDrafterContext | None = None
        self._ragged_verify: bool | None = None
        self.speculating = True
        self.fault_injector = DraftFaultInjector.from_env()
        self.acceptance_guard = AcceptanceGuard()
        self.stop_on_collapse = os.environ.get(STOP_ON_COLLAPSE_ENV, "0").lower() in ("1", "true", "yes")
        self._collapse_reported = False
        adaptive = os.environ.get(ADAPTIVE_ENV, "1").lower() not in ("0", "false", "no")
        self.gate = SpeculationGate() if adaptive else None
        self.corrector = (
            ConfidenceCorrector(ConfidenceCorrectorConfig(self.block_size), self.device) if adaptive else None
        )
        # Without a profiled table the prefix scheduler's step-cost curve is measured from the
        # worker's own steps; verified on CPU only, so elsewhere the generic curve stays.
        self.step_cost = (
            OnlineStepCost(self.sps_table, StepCostConfig(max_verify_per_request=self.block_size + 1))
            if adaptive and not spec.speculative_dspark_sps_table_path and self.device.type == "cpu"
            else None
        )
        self.stats = StepStats()
        self.metrics = None
        if getattr(server_args, "enable_metrics", False):
            from sglang_dspark.sglang.metrics import DSparkMetrics

            self.metrics = DSparkMetrics()
        logger.info(
            "sglang-dspark DSPARK worker: block size %d, %d drafter layers, confidence head %s, "
            "SPS table %s",
            self.block_size,
            len(self.drafter.layers),
            "on" if self.drafter.confidence_head is not None else "off (verify whole blocks)",
            "measured online from verify steps (no --speculative-dspark-sps-table-path)"
            if self.step_cost is not None
            else self.sps_table.device or "default",
        )

    # ------------------------------------------------------------------ set-up
    def _load_drafter(self, path: str) -> DeepSpecDrafter:
        model = self.model_runner.model
        head_weight = getattr(getattr(model, "lm_head", None), "weight", None)
        head_dtype = None if head_weight is None else drafter_head_dtype(self.device, head_weight.dtype)
        if head_dtype is not None:
            logger.info("DSPARK drafter LM head multiplies in %s: this CPU has bf16 instructions (detected)",
                        head_dtype)
        embed, head = _target_shared_modules(model, self.model_runner.model_config.vocab_size, head_dtype)
        num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        drafter = load_deepspec_drafter(
            path,
            embed_tokens=embed,
            lm_head=head,
            device=self.device,
            dtype=head.weight.dtype,
            num_target_layers=num_layers,
        )
        # Made now, so that SGLang sizes the KV pool with the head copy resident.
        drafter.head_weight_copy()
        return _shard_for_tensor_parallelism(drafter.eval().requires_grad_(False))

    def _load_sps_table(self, path: str | None) -> SpsTable:
        if path:
            return load_sps_table(path)
        return default_sps_table(self.device.type)

    def _load_sts(self, path: str | None) -> torch.Tensor | None:
        if not path:
            return None
        sts = StsCalibration.from_json(path)
        return torch.tensor(sts.temperatures, dtype=torch.float32, device=self.device)

    @property
    def drafter_weight_bytes(self) -> int:
        """Drafter weights (the shared embedding and LM head are the target's)."""
        return sum(p.numel() * p.element_size() for p in self.drafter.parameters())

    @property
    def drafter_head_copy_bytes(self) -> int:
        """The LM head copy the drafter multiplies with (its draft-vocabulary rows, or the
        whole head in bf16 on CPUs with bf16 instructions), else 0."""
        copy = self.drafter.head_weight_copy()
        return 0 if copy is None else copy.numel() * copy.element_size()

    @property
    def preloaded_weights_bytes(self) -> int:
        """0: the drafter is loaded after SGLang's pre-load baseline.

        SGLang sizes the KV pool from the free memory measured after every
        weight is loaded, so the drafter's weights are already subtracted.
        ``preloaded_weights_bytes`` is for weights that were resident before
        that baseline (a weight-cache daemon); the scheduler adds them to the
        baseline, which would grow the ``1 - mem_fraction_static`` slack by that
        share of the drafter and charge its weights ``2 - mem_fraction_static``
        times (``tests/serving/test_memory_budget.py`` checks they are charged once).
        """
        return 0

    def alloc_memory_pool(
        self, memory_pool_config=None, req_to_token_pool=None, token_to_kv_pool_allocator=None
    ):
        super().alloc_memory_pool(
            memory_pool_config=memory_pool_config,
            req_to_token_pool=req_to_token_pool,
            token_to_kv_pool_allocator=token_to_kv_pool_allocator,
        )
        num_slots = self.model_runner.token_to_kv_pool.get_key_buffer(0).shape[0]
        self.context = PagedDrafterContext.allocate(
            self.drafter, num_slots, device=self.device, dtype=self.drafter.fc.weight.dtype
        )
        logger.info(
            "DSPARK drafter context pool: %d slots, %.1f MB", num_slots, self.context.nbytes / 2**20
        )
        self.context_bytes_per_slot = PagedDrafterContext.bytes_per_slot(
            self.drafter, self.drafter.fc.weight.dtype
        )
        configurator = getattr(self.model_runner, "kv_cache_configurator", None)
        self.accounted_bytes_per_slot = getattr(configurator, "dflash_draft_cell_size_per_token", None)
        if self.accounted_bytes_per_slot != self.context_bytes_per_slot:
            logger.warning(
                "SGLang budgeted %s bytes per token for the drafter's KV, but its context pool "
                "takes %d: --mem-fraction-static does not cover the difference.",
                self.accounted_bytes_per_slot,
                self.context_bytes_per_slot,
            )

    @property
    def ragged_verify(self) -> bool:
        """Verify batches are ragged (decided once the target's attention backend exists)."""
        if self._ragged_verify is None:
            self._ragged_verify = ragged_supported(self.model_runner.attn_backend)
            logger.info("DSPARK verify batches are %s", "ragged" if self._ragged_verify else "padded")
        return self._ragged_verify

    def init_attention_backends(self):
        pass

    def init_cuda_graphs(self):
        pass

    def clear_cache_pool(self):
        pass

    # ------------------------------------------------- scheduler hooks for DSPARK
    def block_accept_estimate_log_suffix(self) -> str:
        s = self.stats
        return f"dspark accept len: {s.mean_accept_length:.2f}, verified/step: " + (
            f"{s.verified_tokens / s.verify_steps:.2f}" if s.verify_steps else "0"
        )

    def dump_info_records(self) -> dict:
        s = self.stats
        return {
            "dspark_impl": "sglang-dspark",
            "dspark_decode_steps": s.decode_steps,
            "dspark_verify_steps": s.verify_steps,
            "dspark_mean_accept_length": s.mean_accept_length,
            "dspark_accept_histogram": list(s.accept_histogram),
            "dspark_draft_seconds": s.draft_seconds,
            "dspark_schedule_seconds": s.schedule_seconds,
            "dspark_verify_seconds": s.verify_seconds,
            "dspark_verified_tokens": s.verified_tokens,
            "dspark_fallback_steps": s.fallback_steps,
            "dspark_plain_steps": s.plain_steps,
            "dspark_gate": None if self.gate is None else self.gate.summary(),
            "dspark_step_cost": None if self.step_cost is None else self.step_cost.summary(),
            "dspark_confidence_scale": None if self.corrector is None else self.corrector.scale.tolist(),
            "dspark_speculating": self.speculating,
            "dspark_acceptance_rate": self.acceptance_guard.rate,
            "dspark_forward_rows": s.forward_rows,
            "dspark_padded_rows": s.padded_rows,
            "dspark_overhead_seconds": s.overhead_seconds,
            "dspark_step_seconds": s.step_seconds,
            "kv_available_tokens": self._available_kv_tokens(),
            "dspark_context_bytes_per_slot": getattr(self, "context_bytes_per_slot", None),
            "dspark_accounted_bytes_per_slot": getattr(self, "accounted_bytes_per_slot", None),
            "dspark_drafter_weight_bytes": self.drafter_weight_bytes,
            "dspark_drafter_head_copy_bytes": self.drafter_head_copy_bytes,
        }

    def _available_kv_tokens(self) -> int | None:
        allocator = getattr(self, "token_to_kv_pool_allocator", None)
        return None if allocator is None else int(allocator.available_size())

    def clear_info_records(self) -> None:
        self.stats = StepStats()

    def set_dspark_forced_budget_frac(self, frac) -> None:
        logger.warning("set_dspark_forced_budget_frac is not used by sglang-dspark's scheduler")

    def get_confidence_budget_prepare(self):
        return None

    # --------------------------------------------------------------- forward
    def forward_batch_generation(
        self, batch, on_publish=None, grammar_barrier=None, *, pp_proxy_tensors=None
    ) -> GenerationBatchResult:
        if batch.forward_mode.is_idle():
            result = self._idle_result()
        elif batch.forward_mode.is_extend() or batch.is_extend_in_batch:
            result = self._prefill(batch)
        else:
            result = self._decode(batch)
        if on_publish is not None:
            on_publish(result.new_seq_lens)
        return result

    def _idle_result(self) -> GenerationBatchResult:
        empty = torch.empty((0,), dtype=torch.int64, device=self.device)
        draft_input = make_draft_input_v2(bonus_tokens=empty, new_seq_lens=empty)
        return GenerationBatchResult(
            next_token_ids=empty,
            accept_lens=torch.empty((0,), dtype=torch.int32, device=self.device),
            next_draft_input=draft_input,
            speculative_num_draft_tokens=self.verify_width,
            new_seq_lens=empty,
        )

    def _prefill(self, batch) -> GenerationBatchResult:
        out = self.target_worker.forward_batch_generation(
            batch, capture_hidden_mode=CaptureHiddenMode.FULL
        )
        hidden = out.logits_output.hidden_states
        positions = torch.cat(
            [
                torch.arange(p, p + e, dtype=torch.long)
                for p, e in zip(batch.prefix_lens, batch.extend_lens)
            ]
        ).to(self.device)
        with torch.inference_mode():
            self._write_context(hidden, batch.out_cache_loc, positions)
        out.logits_output.hidden_states = None
        self._reseed_prefill_tokens(batch, out)
        out.new_seq_lens = batch.seq_lens
        out.next_draft_input = make_draft_input_v2(
            bonus_tokens=out.next_token_ids, new_seq_lens=batch.seq_lens
        )
        return out

    def _reseed_prefill_tokens(self, batch, out) -> None:
        """Resample the prefill's token of requests with a ``sampling_seed`` from their seed.

        SGLang's sampler honours per-request seeds only under
        ``--enable-deterministic-inference``; every later token of a DSPARK
        request comes from seeded noise, so the first one must too for a seed
        to fix the whole output. The distribution is the target's either way.
        """
        sampling_info = batch.sampling_info
        if batch.return_logprob or sampling_info.is_all_greedy:
            return
        seeds = self._request_seeds(batch)
        logits = out.logits_output.next_token_logits
        if seeds is None or logits is None or logits.shape[0] != len(seeds):
            return
        sampling = self._sampling_params(sampling_info)
        with torch.inference_mode():
            probs = logits_to_probs(logits.float(), sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p)
            noise = uniforms_for_batch(seeds, batch.seq_lens.long(), PREFILL_STREAM, 1, self.generator)
            resampled = sample_from_probs(probs, uniforms=noise[:, 0])
        # Penalties, grammars, biases: the sampler's processed row is not in ``logits``; keep its token.
        seeded = torch.tensor([s is not None and not has_logit_processing(r) for s, r in zip(seeds, batch.reqs)],
                              device=resampled.device)
        out.next_token_ids = torch.where(seeded, resampled.to(out.next_token_ids), out.next_token_ids).contiguous()
        broadcast_from_first_rank(out.next_token_ids)

    def _sampling_params(self, sampling_info) -> SamplingParams:
        temperature = sampling_info.temperatures.view(-1).float()
        top_k = sampling_info.top_ks.view(-1).long()
        # SGLang encodes greedy as top_k == 1 (temperature is then 1.0).
        temperature = torch.where(top_k == 1, torch.zeros_like(temperature), temperature)
        top_k = torch.where(top_k >= (1 << 30), torch.zeros_like(top_k), top_k)
        min_p = sampling_info.min_ps.view(-1).float().to(self.device) if sampling_info.need_min_p_sampling else None
        return SamplingParams(
            temperature=temperature.to(self.device),
            top_p=sampling_info.top_ps.view(-1).float().to(self.device),
            top_k=top_k.to(self.device),
            min_p=min_p,
        )

    def _request_seeds(self, batch) -> list[int | None] | None:
        """Per-request ``sampling_seed`` values, or ``None`` when no request has one."""
        reqs = getattr(batch, "reqs", None) or []
        seeds = [getattr(r.sampling_params, "sampling_seed", None) for r in reqs]
        return seeds if any(s is not None for s in seeds) else None

    def _draft(self, batch, anchors, prefix, rows, sampling, seeds) -> DraftBlock | None:
        """Draft a block, or ``None``: speculation is off, or the drafter failed.

        A drafter failure must not fail the batch: the step then verifies no
        drafts, which is plain decoding through the same verify forward.
        """
        if not self.speculating:
            return None
        constraints = DraftConstraints.for_batch(batch)
        try:
            self.fault_injector.maybe_raise()
            with torch.inference_mode():
                with record_function("dspark.draft.context_gather"):
                    self.context.flush(self.drafter)
                    cache = self.context.gather(batch.req_to_token_pool.req_to_token, rows, prefix)
                return self.drafter.draft(
                    anchors,
                    cache,
                    sampling,
                    sts_temperatures=self.sts_temperatures,
                    generator=self.generator,
                    uniforms=None
                    if seeds is None
                    else uniforms_for_batch(seeds, prefix, DRAFT_STREAM, self.block_size, self.generator),
                    logits_processor=constraints,
                )
        except Exception as e:  # noqa: BLE001 - any drafter failure falls back to plain decoding
            self._record_fallback("draft", e)
            return None
        finally:
            if constraints is not None:
                constraints.close()

    def _write_context(
        self, hidden: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, *, defer: bool = False
    ) -> None:
        """Store committed tokens' drafter context; a failure only costs later acceptance.

        ``defer``: a step that drafted nothing queues its rows until the next
        drafting step needs them or ``DEFERRED_CONTEXT_ROWS`` are queued.
        """
        if not self.speculating:
            return
        try:
            if defer and self.context.queued_rows + slots.shape[0] < DEFERRED_CONTEXT_ROWS:
                self.context.defer(hidden, slots, positions)
            else:
                self.context.write(self.drafter, hidden, slots, positions)
        except Exception as e:  # noqa: BLE001
            self._record_fallback("context write", e)

    def _record_fallback(self, stage: str, error: Exception) -> None:
        self.stats.fallback_steps += 1
        if self.metrics is not None:
            self.metrics.fallback_steps.inc()
        # Log the first failures in full, then every 100th, so a broken drafter cannot flood the log.
        if self.stats.fallback_steps <= 3 or self.stats.fallback_steps % 100 == 0:
            logger.error(
                "DSPARK %s failed (%s: %s); this batch decodes without speculation "
                "(%d fallback steps so far)",
                stage,
                type(error).__name__,
                error,
                self.stats.fallback_steps,
            )

    def _choose_mode(self, batch_size: int) -> Mode:
        """Speculate or decode plainly this step (the gate's choice, rank 0's under TP)."""
        if not self.speculating:
            return Mode.PLAIN
        if self.gate is None:
            return Mode.SPECULATE
        mode = self.gate.choose(batch_size)
        if tp_world_size() > 1:
            # Ranks time their steps differently; all must run rank 0's mode (the drafter all-reduces).
            flag = torch.tensor([mode is Mode.SPECULATE], dtype=torch.int64, device=self.device)
            broadcast_from_first_rank(flag)
            mode = Mode.SPECULATE if bool(flag.item()) else Mode.PLAIN
        return mode

    def _log_gate_switch(self, batch_size: int) -> None:
        label = bucket_label(batch_bucket(batch_size))
        state = self.gate.summary()[label]

        def rate(mode: str) -> str:
            se = state[f"{mode}_tokens_per_second_se"]
            return f"{state[f'{mode}_tokens_per_second']:.1f}" + ("" if se is None else f" +- {se:.1f}")

        logger.info(
            "DSPARK speculation gate: batch size %s now %s (measured tokens/s: speculating %s over %d steps, "
            "plain %s over %d steps)",
            label,
            "speculates" if state["winner"] == Mode.SPECULATE.value else "decodes plainly",
            rate("speculate"),
            state["speculate_steps"],
            rate("plain"),
            state["plain_steps"],
        )

    def _watch_acceptance(self, *, accepted_drafts: int, verified: int) -> None:
        guard = self.acceptance_guard
        guard.update(accepted_drafts, verified)
        if not guard.collapsed or self._collapse_reported:
            return
        self._collapse_reported = True
        logger.warning(
            "DSPARK acceptance collapsed: %.1f%% of the last ~%d verified drafts were accepted. "
            "The drafter most likely does not belong to this target (another model or revision, "
            "wrong target_layer_ids) or its checkpoint is damaged. %s",
            100 * guard.rate,
            guard.verified_drafts,
            "Speculation is now off for this server ("
            + STOP_ON_COLLAPSE_ENV
            + "=1)."
            if self.stop_on_collapse
            else "Set " + STOP_ON_COLLAPSE_ENV + "=1 to stop speculating when this happens.",
        )
        if self.stop_on_collapse:
            self.speculating = False

    def _decode(self, batch) -> GenerationBatchResult:
        bs = batch.batch_size()
        anchors = batch.spec_info.bonus_tokens.view(-1).long()
        prefix = batch.seq_lens.long()
        rows = batch.req_pool_indices.long()
        slot_table = batch.req_to_token_pool.req_to_token
        sampling_info = batch.sampling_info
        sampling = self._sampling_params(sampling_info)
        greedy = bool(sampling_info.is_all_greedy)
        seeds = None if greedy else self._request_seeds(batch)

        mode = self._choose_mode(bs)
        plain = plain_rows(batch)
        phases = StepPhases()
        t0 = phases.next("draft")
        drafting = mode is Mode.SPECULATE and not all(plain)
        block = self._draft(batch, anchors, prefix, rows, sampling, seeds) if drafting else None
        t1 = phases.next("schedule")
        if block is None:
            verify_lens = torch.zeros((bs,), dtype=torch.long, device=self.device)
        elif block.confidence is None:
            verify_lens = torch.full((bs,), self.block_size, dtype=torch.long, device=self.device)
        else:
            confidence = block.confidence if self.corrector is None else self.corrector.correct(block.confidence)
            verify_lens = schedule_prefixes(
                confidence, self.sps_table if self.step_cost is None else self.step_cost.curve(bs)
            )
        if block is not None and any(plain):
            verify_lens = verify_lens.masked_fill(torch.tensor(plain, device=self.device), 0)
        draft_tokens = anchors.new_zeros((bs, 0)) if block is None else block.tokens.contiguous()
        # One decision for all tensor-parallel ranks (rank 0's; identical inputs make them equal anyway).
        broadcast_from_first_rank(verify_lens, draft_tokens)
        verify_lens_cpu = verify_lens.tolist()
        layout = plan_verify_layout(verify_lens_cpu, self.device, ragged=self.ragged_verify)
        width = layout.width
        t2 = phases.next("prepare")

        drafts = draft_tokens[:, : width - 1]
        verify_ids = torch.cat([anchors[:, None], drafts], dim=1)
        positions = prefix[:, None] + torch.arange(width, device=self.device)[None, :]
        cache_loc = slot_table[rows[:, None], positions].long()
        verify_input = DFlashVerifyInput(
            draft_token=layout.select(verify_ids),
            positions=layout.select(positions),
            draft_token_num=width,
            custom_mask=None,
            capture_hidden_mode=CaptureHiddenMode.FULL,
            ragged_verify_layout=layout.sglang_layout(),
        )
        batch.out_cache_loc = layout.select(cache_loc)
        forward_batch, can_run_graph = verify_input.prepare_for_verify(batch, self.target_worker)
        t3 = phases.next("verify_forward")
        logits_output = self.target_worker.forward_batch_generation(
            batch=None, forward_batch=forward_batch, is_verify=True
        ).logits_output
        t4 = phases.next("finish")
        logits = layout.to_padded(logits_output.next_token_logits)
        logits_output.next_token_logits = logits.view(bs * width, -1)
        with record_function("dspark.finish.logit_processing"):
            process_verify_logits(logits, batch, drafts, verify_lens_cpu)

        with torch.inference_mode():
            if greedy:
                result = verify_block(drafts, None, logits, greedy=True, verify_lens=verify_lens)
            else:
                target_probs = logits_to_probs(
                    logits.float(), sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p
                )
                draft_probs = (
                    target_probs[:, :0] if block is None else block.probs[:, : width - 1]
                )
                result = verify_block(
                    drafts,
                    draft_probs,
                    target_probs,
                    generator=self.generator,
                    verify_lens=verify_lens,
                    uniforms=None
                    if seeds is None
                    else uniforms_for_batch(seeds, prefix, VERIFY_STREAM, width, self.generator),
                )
            accepted = result.num_accepted.contiguous()
            committed = result.tokens.contiguous()
            broadcast_from_first_rank(accepted, committed)
            if self.corrector is not None and block is not None and block.confidence is not None:
                self.corrector.update(block.confidence, verify_lens, accepted)
            keep = torch.arange(width, device=self.device)[None, :] <= accepted[:, None]
            hidden = layout.to_padded(logits_output.hidden_states)
            with record_function("dspark.finish.context_write"):
                self._write_context(hidden[keep], cache_loc[keep], positions[keep], defer=block is None)
        logits_output.hidden_states = None

        tokens = committed.clamp_min(0)
        new_bonus = tokens.gather(1, accepted[:, None]).view(-1)
        accept_lens = (accepted + 1).to(torch.int32)
        new_seq_lens = prefix + accepted + 1
        if batch.return_logprob:
            compute_spec_logprobs(batch, logits_output, tokens.reshape(-1), chain_stride=width)
        accept_lens_cpu = accept_lens.tolist()
        t5 = phases.end()

        timing = _StepTiming(
            draft=t1 - t0, schedule=t2 - t1, prepare=t3 - t2, forward=t4 - t3, finish=t5 - t4
        )
        self.stats.add_timing(timing)
        if self.step_cost is not None:
            # Drafting and scheduling cost the same whatever is verified: not part of the curve.
            self.step_cost.record(bs, sum(verify_lens_cpu) + bs, timing.total - timing.draft - timing.schedule)
        self.stats.record_layout(layout)
        self.stats.record(accept_lens_cpu, verify_lens_cpu, self.block_size + 1)
        if mode is Mode.PLAIN and self.speculating:
            self.stats.plain_steps += bs
        # A speculative step whose drafter failed measures neither mode.
        if self.gate is not None and self.speculating and (mode is Mode.PLAIN or block is not None):
            switches = self.gate.switches
            self.gate.record(bs, mode, sum(accept_lens_cpu), timing.total)
            if self.gate.switches != switches:
                self._log_gate_switch(bs)
        if block is not None:
            self._watch_acceptance(accepted_drafts=sum(accept_lens_cpu) - bs, verified=sum(verify_lens_cpu))
        if self.metrics is not None:
            self.metrics.observe_step(
                accept_lens=accept_lens_cpu,
                verify_lens=verify_lens_cpu,
                draft_seconds=timing.draft,
                schedule_seconds=timing.schedule,
                overhead_seconds=timing.overhead,
                step_seconds=timing.total,
                survival=None if block is None or block.confidence is None else block.survival(),
                verify_lens_tensor=verify_lens,
                num_accepted=accepted,
            )
        return GenerationBatchResult(
            logits_output=logits_output,
            next_token_ids=tokens.reshape(-1),
            accept_lens=accept_lens,
            cap_lens=verify_lens.to(torch.int32),
            next_draft_input=make_draft_input_v2(bonus_tokens=new_bonus, new_seq_lens=new_seq_lens),
            speculative_num_draft_tokens=width,
            new_seq_lens=new_seq_lens,
            can_run_cuda_graph=can_run_graph,
        )
