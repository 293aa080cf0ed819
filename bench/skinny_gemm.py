"""F.linear against the skinny CPU GEMM on SmolLM2-135M's linear shapes, side by side.

    python -m bench.skinny_gemm [--rows 1 2 3 4 8] [--threads 2]

For each shape (30 layers' worth of copies, one LM head) and row count, the best
of several sweeps of each form (``sglang_dspark.skinny_gemm.measure_skinny_gemm``),
and the per-step totals: what one decode (1 row) or verify (3 rows) step's
GEMMs cost either way.
"""

from __future__ import annotations

import argparse

import torch

from sglang_dspark.skinny_gemm import measure_skinny_gemm

# SmolLM2-135M: hidden 576, intermediate 1536, 9 query / 3 KV heads of 64, vocab 49152.
SHAPES = {"qkv": ((960, 576), 30), "o": ((576, 576), 30), "gate_up": ((3072, 576), 30),
          "down": ((576, 1536), 30), "lm_head": ((49152, 576), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 8])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    totals = {m: [0.0, 0.0] for m in args.rows}
    print(f"{'shape':>8s} {'copies':>6s} " + " ".join(f"{'M=' + str(m) + ' F.linear/skinny ms':>26s}" for m in args.rows))
    for name, ((n, k), layers) in SHAPES.items():
        weight = torch.randn(n, k)
        m = measure_skinny_gemm(weight, rows=tuple(args.rows), sweep_bytes=layers * weight.numel() * 4)
        for rows, t, s in zip(m.rows, m.torch_ms, m.skinny_ms):
            totals[rows][0] += t
            totals[rows][1] += s
        print(f"{name:>8s} {m.copies:>6d} " + " ".join(f"{t:>17.2f} / {s:>6.2f}" for t, s in zip(m.torch_ms, m.skinny_ms)))
    print(f"{'step':>8s} {'':>6s} " + " ".join(f"{t:>17.2f} / {s:>6.2f}" for t, s in totals.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
