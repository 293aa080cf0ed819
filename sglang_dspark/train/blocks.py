"""Training-time block construction and the parallel (all anchors at once) drafter forward.

Follows DeepSpec ``deepspec/modeling/dspark/common.py`` and
``deepspec/modeling/dspark/qwen3/modeling.py::Qwen3DSparkModel.forward``:

* **anchor sampling** (``sample_anchor_positions``): candidates are positions
  ``i`` in ``[0, T-2]`` with ``loss_mask[i]`` and ``loss_mask[i+1]`` (the anchor
  is an answer token and so is the first token it drafts); up to
  ``num_anchors`` of them are drawn uniformly without replacement (sort by
  uniform random keys), then sorted by position; the rest are padding
  anchors (``keep = False``) at position 0;
* **block input**: the anchor token then ``block_size - 1`` mask tokens, at
  positions ``anchor + 0 .. anchor + K-1``; padding blocks are all mask tokens;
* **attention**: block queries see the context rows strictly before their
  anchor and every row of their own block (bidirectional), nothing else; the
  context K/V come from ``hidden_norm(fc(target features))`` through each
  layer's ``k_proj``/``v_proj`` (no input norm), as in the reference drafter;
* **anchor context** (``anchor_context_input`` drafters only): every row of a
  block starts from ``anchor_input(embedding, projected context row at anchor - 1)``;
* **labels**: slot ``k`` predicts ``input_ids[anchor + k + 1]``; the target
  distribution for slot ``k`` is ``lm_head(last_hidden[anchor + k])``;
* **eval mask** (``build_eval_mask``): slot ``k`` counts iff its label is
  inside the sequence and an answer token, the block is kept, and every
  earlier slot counts (cumulative product: a contiguous prefix);
* **Markov head teacher forcing**: the previous token of slot ``k`` is the
  anchor for ``k = 0`` and the *true* token ``input_ids[anchor + k]``
  otherwise (DeepSpec ``prev_token_ids = cat([anchor, target_ids[:-1]])``);
  the confidence head reads ``[h_k ; W1[prev_k]]`` with the same tokens.

The forward re-uses the :class:`~sglang_dspark.models.deepspec_drafter.DeepSpecDrafter`
modules, so trained weights are the serving weights; a test checks it against
``DeepSpecDrafter.forward`` block by block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sglang_dspark.models.deepspec_drafter import DeepSpecDrafter, _apply_rope

__all__ = [
    "BlockBatch",
    "BlockOutputs",
    "block_attention",
    "build_blocks",
    "drafter_block_forward",
    "drop_padding_anchors",
    "sample_anchors",
    "teacher_forced_outputs",
]


def sample_anchors(
    loss_mask: torch.Tensor, num_anchors: int, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSpec anchor sampling for a batch.

    Args:
        loss_mask: ``[B, T]`` bool, true on answer tokens (false on padding).
        num_anchors: anchors per sequence (``A``).
        generator: RNG for the uniform keys.

    Returns:
        ``anchors [B, A]`` int64 sorted positions (0 for padding slots) and
        ``keep [B, A]`` bool.
    """
    batch, seq_len = loss_mask.shape
    num_candidates = max(seq_len - 1, 0)
    anchors = torch.zeros(batch, num_anchors, dtype=torch.long)
    keep = torch.zeros(batch, num_anchors, dtype=torch.bool)
    if num_candidates == 0:
        return anchors, keep
    mask = loss_mask.bool().cpu()
    valid = mask[:, :num_candidates] & mask[:, 1 : num_candidates + 1]
    keys = torch.rand(batch, num_candidates, generator=generator)
    keys = torch.where(valid, keys, torch.full_like(keys, 2.0))
    order = keys.argsort(dim=1, stable=True)
    positions = torch.arange(num_candidates).expand(batch, -1)
    positions = torch.where(valid, positions, torch.full_like(positions, seq_len + 1))
    picked = torch.gather(positions, 1, order)
    if num_candidates < num_anchors:
        pad = torch.full((batch, num_anchors - num_candidates), seq_len + 1, dtype=torch.long)
        picked = torch.cat([picked, pad], dim=1)
    picked = picked[:, :num_anchors].sort(dim=1).values
    counts = valid.sum(dim=1).clamp(max=num_anchors)
    keep = torch.arange(num_anchors)[None, :] < counts[:, None]
    anchors = torch.where(keep, picked, torch.zeros_like(picked))
    return anchors, keep


def drop_padding_anchors(anchors: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``anchors``/``keep`` without the columns no sequence keeps.

    :func:`sample_anchors` puts a sequence's kept anchors first, so the
    columns past the largest kept count are padding in every row. Padding
    blocks see no context and add no loss, but cost a whole block forward and
    LM head each: answers shorter than ``num_anchors`` leave most columns
    padding (``<= 192``-token answers against 512 anchors: at least 63 %).
    Dropping them changes no kept block's output.
    """
    width = int(keep.sum(dim=1).max()) if keep.numel() else 0
    return anchors[:, :width], keep[:, :width]


@dataclass(frozen=True)
class BlockBatch:
    """Blocks of a padded batch of sequences.

    Attributes:
        input_ids: ``[B, T]`` int64 (padding anywhere past each sequence).
        loss_mask: ``[B, T]`` bool.
        context_hidden: ``[B, T, n*H]`` target features.
        last_hidden: ``[B, T, H]`` target final-norm states (or ``None``).
        anchors: ``[B, A]`` int64 anchor positions.
        keep: ``[B, A]`` bool, real (not padding) blocks.
        block_ids: ``[B, A, K]`` drafter input tokens.
        positions: ``[B, A, K]`` absolute positions of the block slots.
        target_ids: ``[B, A, K]`` label tokens ``input_ids[anchor + k + 1]``.
        prev_ids: ``[B, A, K]`` teacher-forced previous tokens.
        eval_mask: ``[B, A, K]`` bool contiguous-prefix supervision mask.
    """

    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    context_hidden: torch.Tensor
    last_hidden: torch.Tensor | None
    anchors: torch.Tensor
    keep: torch.Tensor
    block_ids: torch.Tensor
    positions: torch.Tensor
    target_ids: torch.Tensor
    prev_ids: torch.Tensor
    eval_mask: torch.Tensor


def build_blocks(
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    context_hidden: torch.Tensor,
    anchors: torch.Tensor,
    keep: torch.Tensor,
    *,
    block_size: int,
    mask_token_id: int,
    last_hidden: torch.Tensor | None = None,
) -> BlockBatch:
    """Block inputs, labels and masks for given anchors (DeepSpec semantics)."""
    batch, seq_len = input_ids.shape
    offsets = torch.arange(block_size)
    positions = anchors[..., None] + offsets  # [B, A, K]
    label_idx = positions + 1
    safe_label = label_idx.clamp(max=seq_len - 1)
    safe_label = torch.where(keep[..., None], safe_label, torch.zeros_like(safe_label))
    rows = torch.arange(batch)[:, None, None]
    target_ids = input_ids[rows, safe_label]
    label_ok = (label_idx < seq_len) & loss_mask[rows, safe_label].bool() & keep[..., None]
    eval_mask = label_ok.long().cumprod(dim=-1).bool()
    anchor_tokens = input_ids[torch.arange(batch)[:, None], anchors]
    block_ids = torch.full_like(positions, mask_token_id)
    block_ids[..., 0] = torch.where(keep, anchor_tokens, torch.full_like(anchor_tokens, mask_token_id))
    prev_ids = torch.cat([anchor_tokens[..., None], target_ids[..., :-1]], dim=-1)
    return BlockBatch(
        input_ids=input_ids,
        loss_mask=loss_mask.bool(),
        context_hidden=context_hidden,
        last_hidden=last_hidden,
        anchors=anchors,
        keep=keep,
        block_ids=block_ids,
        positions=positions,
        target_ids=target_ids,
        prev_ids=prev_ids,
        eval_mask=eval_mask,
    )


def block_attention(
    q: torch.Tensor,
    k_ctx: torch.Tensor,
    v_ctx: torch.Tensor,
    k_blk: torch.Tensor,
    v_blk: torch.Tensor,
    ctx_visible: torch.Tensor,
    block: int,
    scale: float,
) -> torch.Tensor:
    """The DSpark training attention without its zero blocks.

    Every block's queries see the context rows before their anchor and the
    block's own ``block`` rows (both directions). A dense ``[Q, T + Q]`` mask
    wastes ``Q - block`` of every query's keys on other blocks; here the
    context scores are ``[Q, T]`` and the block scores ``[A, block, block]``,
    joined in one softmax.

    Args:
        q: ``[B, Hq, Q, d]`` with ``Q = A * block``; ``k_*``/``v_*``:
            ``[B, Hkv, T or Q, d]`` (grouped-query heads shared, ``Hq % Hkv == 0``).
        ctx_visible: ``[B, Q, T]`` bool.

    Returns:
        ``[B, Hq, Q, d]``.
    """
    batch, num_q_heads, num_q, dim = q.shape
    num_kv = k_ctx.shape[1]
    groups = num_q_heads // num_kv
    num_ctx = k_ctx.shape[2]
    num_blocks = num_q // block
    qg = q.reshape(batch, num_kv, groups, num_q, dim)
    s_ctx = torch.matmul(qg, k_ctx.unsqueeze(2).transpose(-1, -2))  # [B, Hkv, g, Q, T]
    qb = qg.reshape(batch, num_kv, groups, num_blocks, block, dim)
    kb = k_blk.reshape(batch, num_kv, 1, num_blocks, block, dim)
    s_blk = torch.matmul(qb, kb.transpose(-1, -2)).reshape(batch, num_kv, groups, num_q, block)
    scores = torch.cat([s_ctx.float(), s_blk.float()], dim=-1) * scale
    scores[..., :num_ctx] = scores[..., :num_ctx].masked_fill(~ctx_visible[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v_ctx.dtype)
    p_ctx, p_blk = probs[..., :num_ctx], probs[..., num_ctx:]
    out = torch.matmul(p_ctx, v_ctx.unsqueeze(2))
    vb = v_blk.reshape(batch, num_kv, 1, num_blocks, block, dim)
    p_blk = p_blk.reshape(batch, num_kv, groups, num_blocks, block, block)
    out = out + torch.matmul(p_blk, vb).reshape(batch, num_kv, groups, num_q, dim)
    return out.reshape(batch, num_q_heads, num_q, dim)


def drafter_block_forward(drafter: DeepSpecDrafter, blocks: BlockBatch) -> torch.Tensor:
    """Final-norm hidden states ``[B, A, K, H]`` of every block, in one pass.

    Queries ``[B, A*K]`` attend to ``[context rows (T) ; block rows (A*K)]``
    under the DSpark mask (DeepSpec ``create_dspark_attention_mask``).
    """
    cfg = drafter.config
    batch, num_blocks, block = blocks.block_ids.shape
    seq_len = blocks.context_hidden.shape[1]
    device = drafter.fc.weight.device

    ctx = drafter.project_context(blocks.context_hidden.to(device))  # [B, T, H]
    ctx_pos = torch.arange(seq_len, device=device).expand(batch, -1)
    cos_c, sin_c = drafter.rotary_emb(ctx_pos)
    blk_pos = blocks.positions.reshape(batch, num_blocks * block).to(device)
    cos_b, sin_b = drafter.rotary_emb(blk_pos)

    anchors = blocks.anchors.to(device)
    keep = blocks.keep.to(device)
    q_block = torch.arange(num_blocks * block, device=device) // block  # [Q]
    q_anchor = anchors[:, q_block]  # [B, Q]
    ctx_visible = torch.arange(seq_len, device=device)[None, None, :] < q_anchor[..., None]
    ctx_visible = ctx_visible & keep[:, q_block][..., None]  # [B, Q, T]

    anchor_context = None
    if drafter.anchor_input is not None:
        # The projected row before each anchor (zeros for an anchor at 0: no context), as served.
        prev = (anchors - 1).clamp(min=0)
        anchor_context = ctx[torch.arange(batch, device=device)[:, None], prev]
        anchor_context = anchor_context * ((anchors > 0) & keep)[..., None].to(ctx.dtype)
    x = drafter.block_inputs(blocks.block_ids.to(device), anchor_context).reshape(batch, num_blocks * block, -1)
    for layer in drafter.layers:
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = _apply_rope(attn._heads(h, attn.q_proj, attn.num_heads, attn.q_norm), cos_b, sin_b)
        k_blk, v_blk = attn.key_values(h, cos_b, sin_b)
        k_ctx, v_ctx = attn.key_values(ctx, cos_c, sin_c)
        out = block_attention(q, k_ctx, v_ctx, k_blk, v_blk, ctx_visible, block, attn.head_dim**-0.5)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(batch, num_blocks * block, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    hidden = drafter.norm(x)
    return hidden.reshape(batch, num_blocks, block, cfg.hidden_size)


@dataclass(frozen=True)
class BlockOutputs:
    """Teacher-forced outputs of every block (DeepSpec ``DSparkForwardOutput``).

    Attributes:
        draft_logits: ``[B, A, K, Vd]`` backbone logits plus the Markov term
            (``Vd``: the drafter's output vocabulary).
        target_logits: ``[B, A, K, V]`` target logits at the same slots (or ``None``).
        target_ids: ``[B, A, K]``.
        eval_mask: ``[B, A, K]`` bool.
        keep: ``[B, A]`` bool.
        confidence_logits: ``[B, A, K]`` float32 (or ``None``).
        hidden: ``[B, A, K, H]`` final-norm drafter states.
    """

    draft_logits: torch.Tensor
    target_logits: torch.Tensor | None
    target_ids: torch.Tensor
    eval_mask: torch.Tensor
    keep: torch.Tensor
    confidence_logits: torch.Tensor | None
    hidden: torch.Tensor


def _target_logits(drafter: DeepSpecDrafter, blocks: BlockBatch) -> torch.Tensor:
    """``lm_head(last_hidden[anchor + k])`` per slot, computing each position once."""
    lm_head = drafter._target_modules().lm_head
    device = drafter.fc.weight.device
    batch, num_blocks, block = blocks.positions.shape
    seq_len = blocks.input_ids.shape[1]
    pos = blocks.positions.clamp(max=seq_len - 1)
    out = []
    with torch.no_grad():
        for b in range(batch):
            flat = pos[b].reshape(-1)
            uniq, inverse = torch.unique(flat, return_inverse=True)
            hidden = blocks.last_hidden[b, uniq].to(device)
            weight = getattr(lm_head, "weight", None)
            logits = lm_head(hidden if weight is None else hidden.to(weight.dtype)).float()
            out.append(logits[inverse.to(device)].reshape(num_blocks, block, -1))
    return torch.stack(out)


def teacher_forced_outputs(
    drafter: DeepSpecDrafter, blocks: BlockBatch, *, with_target: bool = True
) -> BlockOutputs:
    """Drafter logits (Markov head teacher-forced), confidences and target logits.

    ``draft_logits`` cover the drafter's output vocabulary (its draft
    vocabulary when it has one); ``target_logits`` always the whole vocabulary.
    """
    device = drafter.fc.weight.device
    hidden = drafter_block_forward(drafter, blocks)
    base = drafter.head_logits(hidden).float()
    prev = blocks.prev_ids.to(device)
    markov = drafter.markov_head
    hidden_arg = hidden if markov.needs_hidden else None
    draft_logits = base + markov.teacher_forced_bias(prev, hidden_arg).float()
    confidence = None
    if drafter.confidence_head is not None:
        confidence = drafter.confidence_head(hidden, markov.prev_features(prev))
    target_logits = _target_logits(drafter, blocks) if with_target else None
    return BlockOutputs(
        draft_logits=draft_logits,
        target_logits=target_logits,
        target_ids=blocks.target_ids.to(device),
        eval_mask=blocks.eval_mask.to(device),
        keep=blocks.keep.to(device),
        confidence_logits=confidence,
        hidden=hidden,
    )
