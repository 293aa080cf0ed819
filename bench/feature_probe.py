"""What the target's features before an anchor say about the token after it: a position-1 probe.

    python -m bench.feature_probe --data RUN/data --target TARGET_DIR [--epochs 1] [--out out/bench/feature-probe]

A block drafter's first draft (position 1) predicts token ``t + 1`` from the
anchor token ``t`` and the target's features of the tokens before it; the
nearest of those is row ``t - 1``, the one that predicted the anchor. This
trains three small predictors on the distilled training split and scores
greedy top-1 on the held-out split, over a draft vocabulary of the most frequent
training labels (close to, not the same as, the trainer's: it counts every
answer token and always adds EOS):

* ``bigram``: the most frequent successor of the anchor token (a count table);
* ``embedding``: an MLP on the anchor's embedding alone (a learnt bigram);
* ``features``: the same MLP on ``[norm(fc(features[t-1])) ; norm(embedding[t])]``.

The gap between ``features`` and a drafter's measured position-1 acceptance
is what the drafter fails to take from its context; the gap between
``features`` and ``bigram`` is what the features carry. Writes
``feature_probe.json`` and ``feature_probe.png`` (held-out top-1 vs examples
trained).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ProbeData", "bigram_top1", "load_probe_data", "train_probe"]


@dataclass(frozen=True)
class ProbeData:
    """Position-1 examples: anchor ``t`` with ``t`` and ``t + 1`` answer tokens, ``t >= 1``.

    Attributes:
        features: ``[N, n*H]`` target features of row ``t - 1`` (bf16).
        anchors: ``[N]`` token ``t``.
        labels: ``[N]`` token ``t + 1``.
        heldout: ``[N]`` bool, from a held-out sequence.
    """

    features: torch.Tensor
    anchors: torch.Tensor
    labels: torch.Tensor
    heldout: torch.Tensor


def load_probe_data(data_dir: str | Path, *, max_shards: int | None = None) -> ProbeData:
    """Every position-1 example of a distilled data directory."""
    from sglang_dspark.train.distill import DistilledData

    data = DistilledData(data_dir, max_shards=max_shards)
    feats, anchors, labels, heldout = [], [], [], []
    for i in range(len(data)):
        seq = data.get(i)
        mask = seq.loss_mask
        t = torch.nonzero(mask[1:-1] & mask[2:]).flatten() + 1
        if t.numel() == 0:
            continue
        feats.append(seq.context_hidden[t - 1].bfloat16())
        anchors.append(seq.input_ids[t])
        labels.append(seq.input_ids[t + 1])
        heldout.append(torch.full((t.numel(),), bool(data.heldout[i])))
    if not feats:
        raise ValueError(f"{data_dir}: no answer token pairs to probe.")
    return ProbeData(torch.cat(feats), torch.cat(anchors), torch.cat(labels), torch.cat(heldout))


def bigram_top1(data: ProbeData, vocab_size: int) -> float:
    """Held-out top-1 of the most frequent training successor of each anchor token (ties by id)."""
    train = ~data.heldout
    pair = data.anchors[train] * vocab_size + data.labels[train]
    uniq, counts = torch.unique(pair, return_counts=True)
    first, second = uniq // vocab_size, uniq % vocab_size
    # Sort by (first, -count, second) and keep the first row of each anchor token.
    order = torch.argsort(second, stable=True)
    order = order[torch.argsort(-counts[order], stable=True)]
    order = order[torch.argsort(first[order], stable=True)]
    first, second = first[order], second[order]
    keep = torch.ones_like(first, dtype=torch.bool)
    keep[1:] = first[1:] != first[:-1]
    best = torch.full((vocab_size,), -1, dtype=torch.long)
    best[first[keep]] = second[keep]
    held = data.heldout
    return float((best[data.anchors[held]] == data.labels[held]).float().mean())


class _Probe(nn.Module):
    def __init__(self, embed: torch.Tensor, feature_size: int | None, width: int) -> None:
        super().__init__()
        hidden = embed.shape[1]
        self.register_buffer("embed", embed)
        self.fc = nn.Linear(feature_size, hidden, bias=False) if feature_size else None
        self.feature_norm = nn.RMSNorm(hidden)
        self.embed_norm = nn.RMSNorm(hidden)
        self.up = nn.Linear(hidden * (2 if feature_size else 1), width)
        self.down = nn.Linear(width, hidden)
        self.out_norm = nn.RMSNorm(hidden)

    def forward(self, features: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        z = self.embed_norm(F.embedding(anchors, self.embed))
        if self.fc is not None:
            z = torch.cat([self.feature_norm(self.fc(features.float())), z], dim=-1)
        return self.out_norm(self.down(F.silu(self.up(z))))


def train_probe(
    data: ProbeData,
    embed: torch.Tensor,
    head_rows: torch.Tensor,
    draft_index: torch.Tensor,
    *,
    use_features: bool,
    epochs: float = 1.0,
    batch_size: int = 1024,
    lr: float = 2e-3,
    width: int = 1536,
    eval_every: int = 50,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Train one MLP probe; returns held-out top-1 at every ``eval_every`` steps and at the end.

    Args:
        embed: ``[V, H]`` the target's token embedding (frozen).
        head_rows: ``[Vd, H]`` the target's LM-head rows of the draft vocabulary (frozen).
        draft_index: ``[V]`` draft row of each target token, ``-1`` outside the vocabulary.
    """
    from tqdm import tqdm

    torch.manual_seed(seed)
    probe = _Probe(embed.float(), data.features.shape[1] if use_features else None, width)
    opt = torch.optim.AdamW([p for p in probe.parameters() if p.requires_grad], lr=lr)
    train_idx = torch.nonzero(~data.heldout).flatten()
    held_idx = torch.nonzero(data.heldout).flatten()
    steps = max(1, int(len(train_idx) * epochs / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    head = head_rows.to(torch.bfloat16)
    labels = draft_index[data.labels]
    gen = torch.Generator().manual_seed(seed)

    def heldout_top1() -> float:
        hits = 0
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            for start in range(0, len(held_idx), 4096):
                idx = held_idx[start : start + 4096]
                logits = probe(data.features[idx], data.anchors[idx]) @ head.T
                hits += int((logits.argmax(-1) == labels[idx]).sum())
        return hits / max(len(held_idx), 1)

    curve = []
    started = time.perf_counter()
    for step in tqdm(range(steps), desc="features" if use_features else "embedding",
                     unit="step", disable=not progress):
        idx = train_idx[torch.randint(len(train_idx), (batch_size,), generator=gen)]
        idx = idx[labels[idx] >= 0]
        with torch.autocast("cpu", torch.bfloat16):
            logits = probe(data.features[idx], data.anchors[idx]) @ head.T
        loss = F.cross_entropy(logits.float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve.append({"step": step + 1, "examples": (step + 1) * batch_size,
                          "train_ce": round(loss.item(), 4), "heldout_top1": round(heldout_top1(), 4),
                          "seconds": round(time.perf_counter() - started, 1)})
    return curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a distilled data directory (RUN/data)")
    parser.add_argument("--target", required=True, help="the target model directory")
    parser.add_argument("--draft-vocab-size", type=int, default=16384)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-shards", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="out/bench/feature-probe")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from sglang_dspark.algorithm.draft_vocab import draft_vocab_from_counts
    from sglang_dspark.train.target import load_target

    target, _ = load_target(args.target)
    embed = target.get_input_embeddings().weight.detach().float()
    head = target.get_output_embeddings().weight.detach().float()
    data = load_probe_data(args.data, max_shards=args.max_shards)
    vocab_size = embed.shape[0]
    counts = torch.bincount(data.labels[~data.heldout], minlength=vocab_size)
    vocab = draft_vocab_from_counts(counts, min(args.draft_vocab_size, vocab_size))
    index = vocab.draft_index(torch.arange(vocab_size))
    result = {
        "data": str(args.data), "target": str(args.target),
        "train_examples": int((~data.heldout).sum()), "heldout_examples": int(data.heldout.sum()),
        "draft_vocab_size": vocab.size,
        "heldout_label_coverage": round(float((index[data.labels[data.heldout]] >= 0).float().mean()), 4),
        "bigram_heldout_top1": round(bigram_top1(data, vocab_size), 4),
    }
    for name, use in (("embedding", False), ("features", True)):
        curve = train_probe(data, embed, head[vocab.ids], index, use_features=use, epochs=args.epochs,
                            progress=not args.no_progress)
        result[name] = {"curve": curve, "heldout_top1": curve[-1]["heldout_top1"]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "feature_probe.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _plot(result, out / "feature_probe.png")
    print(f"position-1 top-1 on {result['heldout_examples']} held-out examples: bigram "
          f"{result['bigram_heldout_top1']:.3f}, embedding MLP {result['embedding']['heldout_top1']:.3f}, "
          f"features MLP {result['features']['heldout_top1']:.3f} -> {out}")
    return 0


def _plot(result: dict, path: Path) -> None:
    from bench.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in ("features", "embedding"):
        curve = result[name]["curve"]
        ax.plot([p["examples"] for p in curve], [p["heldout_top1"] for p in curve], marker="o", label=f"{name} MLP")
    ax.axhline(result["bigram_heldout_top1"], color="gray", linestyle="--", label="bigram table")
    ax.set_xlabel("position-1 examples trained")
    ax.set_ylabel("held-out top-1")
    ax.set_title("What the target's features before an anchor carry")
    ax.legend()
    _save(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
