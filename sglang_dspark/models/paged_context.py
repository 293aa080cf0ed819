"""Drafter context K/V stored by token slot, in the target KV pool's index space.

The serving engine gives every committed token a slot in its KV pool. The
drafter keeps its own per-layer context keys and values in a pool with the same
number of slots, indexed by the same slot ids: whatever the engine does with a
slot (share it through a prefix cache, free it, reuse it) applies to the
drafter's row too, with no bookkeeping of its own. A row is written once, when
the target hidden states of that token are known (prefill, or the token was
accepted in a verify step).

Rows of steps that draft nothing can wait: :meth:`PagedDrafterContext.defer`
queues them and the next :meth:`~PagedDrafterContext.write` or
:meth:`~PagedDrafterContext.flush` projects everything queued in one batch, in
queue order (a slot freed and reused meanwhile ends with its newest row). One
projection of many rows reads the drafter's weights once instead of once per
step, which is most of what a plain decode step of a few requests pays for
its context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sglang_dspark.models.deepspec_drafter import DeepSpecDrafter, DrafterContextCache


@dataclass
class PagedDrafterContext:
    """Per-layer drafter context keys and values, one row per KV slot.

    Attributes:
        keys: per drafter layer ``[num_slots, kv_heads, head_dim]`` (after
            k_norm and RoPE at the token's position).
        values: per drafter layer ``[num_slots, kv_heads, head_dim]``.
        rows: ``[num_slots, H]`` projected context rows (``hidden_norm(fc(.))``)
            for drafters with ``anchor_context_input``, ``None`` otherwise.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    rows: torch.Tensor | None = None
    _queued: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)

    @classmethod
    def allocate(
        cls,
        drafter: DeepSpecDrafter,
        num_slots: int,
        *,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> "PagedDrafterContext":
        """Zero-filled pool of ``num_slots`` rows for every drafter layer."""
        cfg = drafter.config
        shape = (num_slots, drafter.kv_heads_per_rank, cfg.head_dim)
        rows = None
        if cfg.anchor_context_input:
            rows = torch.zeros(num_slots, cfg.hidden_size, dtype=dtype, device=device)
        return cls(
            keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in drafter.layers],
            values=[torch.zeros(shape, dtype=dtype, device=device) for _ in drafter.layers],
            rows=rows,
        )

    @staticmethod
    def bytes_per_slot(drafter: DeepSpecDrafter, dtype: torch.dtype) -> int:
        """Memory one slot takes: keys and values of every layer, plus the context row for
        ``anchor_context_input`` drafters."""
        cfg = drafter.config
        elem = torch.empty((), dtype=dtype).element_size()
        rows = cfg.hidden_size if cfg.anchor_context_input else 0
        return (2 * len(drafter.layers) * drafter.kv_heads_per_rank * cfg.head_dim + rows) * elem

    @property
    def num_slots(self) -> int:
        """Rows per layer."""
        return self.keys[0].shape[0]

    @property
    def nbytes(self) -> int:
        """Total memory of the pool."""
        tensors = (*self.keys, *self.values, *(() if self.rows is None else (self.rows,)))
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def queued_rows(self) -> int:
        """Rows :meth:`defer` queued that are not written yet."""
        return sum(slots.shape[0] for _, slots, _ in self._queued)

    def defer(self, target_hidden: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor) -> None:
        """Queue rows for the next :meth:`write` or :meth:`flush` (arguments as :meth:`write`'s).

        The tensors are kept, not copied: pass ones no one writes to later.
        """
        if target_hidden.shape[0]:
            self._queued.append((target_hidden, slots, positions))

    def flush(self, drafter: DeepSpecDrafter) -> None:
        """Write every queued row (before anything reads the pool)."""
        if self._queued:
            self._write_rows(drafter, *self._take_queued())

    def write(
        self,
        drafter: DeepSpecDrafter,
        target_hidden: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
    ) -> None:
        """Project committed tokens' target hidden states into their slots, after any queued rows.

        Args:
            drafter: the drafter whose ``fc``/``hidden_norm`` and per-layer
                ``k_proj``/``v_proj`` build the context rows.
            target_hidden: ``[N, n_layers * H]`` concatenated target hidden
                states at ``target_layer_ids``.
            slots: ``[N]`` KV slot ids of those tokens.
            positions: ``[N]`` their absolute positions.
        """
        if self._queued:
            self.defer(target_hidden, slots, positions)
            target_hidden, slots, positions = self._take_queued()
        self._write_rows(drafter, target_hidden, slots, positions)

    def _take_queued(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Empty the queue (even if writing its rows then fails): its rows, concatenated in order."""
        queued, self._queued = self._queued, []
        slots = torch.cat([s.to(self.keys[0].device, torch.long) for _, s, _ in queued])
        return _newest_per_slot(
            torch.cat([h for h, _, _ in queued]), slots, torch.cat([p.to(slots.device, torch.long) for _, _, p in queued])
        )

    @torch.no_grad()
    def _write_rows(
        self, drafter: DeepSpecDrafter, target_hidden: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor
    ) -> None:
        if target_hidden.shape[0] == 0:
            return
        ctx = drafter.project_context(target_hidden[None])
        cos, sin = drafter.rotary_emb(positions[None].to(ctx.device))
        slots = slots.to(self.keys[0].device, torch.long)
        for i, layer in enumerate(drafter.layers):
            k, v = layer.self_attn.key_values(ctx, cos, sin)  # [1, kv, N, D]
            self.keys[i][slots] = k[0].transpose(0, 1).to(self.keys[i].dtype)
            self.values[i][slots] = v[0].transpose(0, 1).to(self.values[i].dtype)
        if self.rows is not None:
            self.rows[slots] = ctx[0].to(self.rows.dtype)

    def gather(
        self, slot_table: torch.Tensor, row_ids: torch.Tensor, lengths: torch.Tensor
    ) -> DrafterContextCache:
        """Batch view of each request's context for one drafting step.

        Args:
            slot_table: ``[rows, max_len]`` slot id of every token of every
                request row (the engine's request-to-token table).
            row_ids: ``[B]`` the batch's rows in ``slot_table``.
            lengths: ``[B]`` context length of each request (tokens before its
                anchor).
        """
        if self._queued:
            raise RuntimeError("drafter context rows are still queued: flush() before gather()")
        batch = row_ids.shape[0]
        device = self.keys[0].device
        lengths = lengths.to(device=device, dtype=torch.long)
        capacity = max(int(lengths.max().item()) if batch else 0, 1)
        cols = torch.arange(capacity, device=device)
        valid = cols[None, :] < lengths[:, None]
        slots = slot_table[row_ids.to(slot_table.device).long()][:, :capacity].to(device).long()
        slots = torch.where(valid, slots, torch.zeros_like(slots))
        keys, values = [], []
        for k_pool, v_pool in zip(self.keys, self.values):
            # [B, C, kv, D] -> [B, kv, C, D]
            keys.append(k_pool[slots].permute(0, 2, 1, 3))
            values.append(v_pool[slots].permute(0, 2, 1, 3))
        last_rows = None
        if self.rows is not None:
            last = slots.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
            last_rows = self.rows[last] * (lengths > 0)[:, None].to(self.rows.dtype)
        return DrafterContextCache(keys=keys, values=values, lengths=lengths.clone(), last_rows=last_rows)


def _newest_per_slot(
    hidden: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep each slot's last row: an indexed store with repeated indices keeps an unspecified one."""
    unique, inverse = torch.unique(slots, return_inverse=True)
    if unique.shape[0] == slots.shape[0]:
        return hidden, slots, positions
    order = torch.arange(slots.shape[0], device=slots.device)
    last = torch.full_like(unique, -1).scatter_reduce(0, inverse, order, reduce="amax")
    return hidden[last], slots[last], positions[last]
