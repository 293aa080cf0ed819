#!/usr/bin/env python3
"""Decode-shaped MXFP4 MoE benchmark at DeepSeek-V4-Flash sizes (needs a CUDA GPU).

For each token count T it draws random top-k routing, times each
implementation and reports the achieved weight bandwidth: bytes of the packed
E2M1 weights plus E8M0 scales of the experts the batch touches, divided by the
time, also as a fraction of the GPU's HBM peak. Every implementation is charged
the same MXFP4 bytes, so the fractions compare directly.

Implementations:

* ``triton``: the fused W4A16 kernel (``kernels/mxfp4_moe``).
* ``flashinfer``: FlashInfer's fused MoE (SM90 CUTLASS / SM100 TRT-LLM-Gen);
  skipped with a note where unavailable. Weight preparation is done once,
  outside the timing.
* ``dequant_bf16``: baseline that dequantises the touched experts to bfloat16
  on every call and runs one bfloat16 GEMM pair per expert.

Weights are random bytes with scales near 2**-7 (realistic magnitudes; the
timings do not depend on the values). Example::

    python bench/moe_mxfp4.py --config /models/DeepSeek-V4-Flash/config.json \\
        --json out/moe_mxfp4.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# One home for the expert sizes, the config reader and the HBM peak table: the selftest's.
from sglang_dspark.selftest.config import V4_FLASH_MOE as V4_FLASH  # noqa: E402
from sglang_dspark.selftest.config import MoeShape, moe_shape_from_config  # noqa: E402
from sglang_dspark.selftest.device_facts import hbm_peak as _hbm_peak  # noqa: E402


def shape_from_config(path: str | None) -> MoeShape:
    """Read MoE sizes from an HF ``config.json`` (or DeepSeek's inference config); V4-Flash when absent."""
    return V4_FLASH if path is None else moe_shape_from_config(path)


def hbm_peak(device_name: str) -> float | None:
    """HBM peak in bytes/s for a device name, or ``None`` when unknown."""
    found = _hbm_peak(device_name)
    return None if found is None else found[1]


def bytes_per_expert(shape: MoeShape) -> int:
    """Packed weights plus scales of one expert's w13 and w2."""
    return shape.bytes_per_expert


def make_weights(shape: MoeShape, num_local: int, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=device).manual_seed(seed)
    h, i = shape.hidden, shape.intermediate

    def packed(*size: int) -> torch.Tensor:
        return torch.randint(-128, 128, size, dtype=torch.int8, device=device, generator=g)

    def scales(*size: int) -> torch.Tensor:
        return torch.randint(118, 123, size, dtype=torch.uint8, device=device, generator=g)

    return (
        packed(num_local, 2 * i, h // 2),
        scales(num_local, 2 * i, h // 32),
        packed(num_local, h, i // 2),
        scales(num_local, h, i // 32),
    )


def make_batch(shape: MoeShape, tokens: int, device: torch.device, seed: int):
    g = torch.Generator(device=device).manual_seed(seed + tokens)
    x = torch.randn(tokens, shape.hidden, device=device, generator=g).to(torch.bfloat16)
    logits = torch.rand(tokens, shape.experts, device=device, generator=g)
    weights, ids = logits.topk(shape.top_k, dim=-1)
    return x, torch.softmax(weights, dim=-1), ids.to(torch.int32)


def dequant_bf16_moe(x, w13, w13_s, w2, w2_s, topk_weights, topk_ids, swiglu_limit, num_local):
    """Baseline: dequantise touched experts to bf16 each call, then per-expert bf16 GEMMs."""
    from kernels.mxfp4_moe.reference import swiglu
    from sglang_dspark.moe import mxfp4

    touched = torch.unique(topk_ids[topk_ids < num_local])
    w13_bf = mxfp4.dequantize(w13[touched], w13_s[touched]).to(torch.bfloat16)
    w2_bf = mxfp4.dequantize(w2[touched], w2_s[touched]).to(torch.bfloat16)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for slot, e in enumerate(touched.tolist()):
        tok, j = torch.nonzero(topk_ids == e, as_tuple=True)
        act = swiglu((x[tok] @ w13_bf[slot].T).float(), swiglu_limit).to(torch.bfloat16)
        y = (act @ w2_bf[slot].T).float() * topk_weights[tok, j, None]
        out.index_add_(0, tok, y)
    return out.to(torch.bfloat16)


def time_ms(fn: Callable[[], object], warmup: int, rep: int, cuda_graph: bool) -> float:
    """Median milliseconds per call (L2 flushed between calls unless graphed)."""
    import triton.testing

    if cuda_graph:
        return float(triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median"))
    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def build_impls(args, shape: MoeShape, weights, num_local: int) -> tuple[dict[str, Callable], dict[str, str]]:
    """Map impl name -> fn(x, topk_weights, topk_ids); plus skipped impls with reasons."""
    from kernels.mxfp4_moe.kernel import MoeConfig, fused_moe_mxfp4

    config = None
    if args.triton_config:
        bm, bn, bk, warps, stages = (int(v) for v in args.triton_config.split(","))
        config = MoeConfig(block_m=bm, block_n=bn, block_k=bk, num_warps=warps, num_stages=stages)
    impls: dict[str, Callable] = {}
    skipped: dict[str, str] = {}
    limit = shape.swiglu_limit
    for name in args.impls:
        if name == "triton":
            impls[name] = lambda x, w, ids: fused_moe_mxfp4(
                x, *weights, w, ids, swiglu_limit=limit, num_local_experts=num_local, config=config
            )
        elif name == "dequant_bf16":
            impls[name] = lambda x, w, ids: dequant_bf16_moe(x, *weights, w, ids, limit, num_local)
        elif name == "flashinfer":
            from sglang_dspark.moe import flashinfer_mxfp4 as fi

            backend, why = fi.select_backend(weights[0].device, shape.hidden, shape.intermediate)
            if backend is None:
                skipped[name] = why
                continue
            prepared = fi.prepare_weights(*weights, backend)
            impls[name] = lambda x, w, ids, p=prepared: fi.flashinfer_moe(x, p, w, ids, swiglu_limit=limit)
        else:
            raise SystemExit(f"unknown impl {name!r}")
    return impls, skipped


def verify(impls: dict[str, Callable], shape: MoeShape, weights, num_local: int, device) -> dict[str, float]:
    """Max error of each impl against the torch reference, relative to the output's max."""
    from kernels.mxfp4_moe.reference import fused_moe_mxfp4_reference

    x, w, ids = make_batch(shape, 8, device, seed=1234)
    want = fused_moe_mxfp4_reference(
        x, *weights, w, ids, swiglu_limit=shape.swiglu_limit, num_local_experts=num_local
    ).float()
    scale = want.abs().max().clamp_min(1e-6)
    return {name: float((fn(x, w, ids).float() - want).abs().max() / scale) for name, fn in impls.items()}


def run(args) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    device = torch.device("cuda")
    shape = shape_from_config(args.config)
    if args.no_swiglu_limit:
        shape = MoeShape(shape.hidden, shape.intermediate, shape.experts, shape.top_k, None)
    if shape.experts % args.ep_size:
        raise SystemExit(f"{shape.experts} experts do not split over ep_size={args.ep_size}")
    num_local = shape.experts // args.ep_size
    name = torch.cuda.get_device_name(device)
    peak = args.hbm_peak_tbps * 1e12 if args.hbm_peak_tbps else hbm_peak(name)

    weights = make_weights(shape, num_local, device, args.seed)
    impls, skipped = build_impls(args, shape, weights, num_local)
    errors = verify(impls, shape, weights, num_local, device) if not args.no_verify else {}

    per_expert = bytes_per_expert(shape)
    rows = []
    for tokens in args.tokens:
        x, w, ids = make_batch(shape, tokens, device, args.seed)
        touched = int(torch.unique(ids[ids < num_local]).numel())
        nbytes = touched * per_expert
        row = {"tokens": tokens, "touched_experts": touched, "weight_bytes": nbytes, "impls": {}}
        for impl, fn in impls.items():
            graph = args.cuda_graph and impl != "dequant_bf16"  # the baseline syncs on the host
            ms = time_ms(lambda fn=fn: fn(x, w, ids), args.warmup, args.rep, graph)
            bw = nbytes / (ms * 1e-3)
            row["impls"][impl] = {
                "ms": ms,
                "tbps": bw / 1e12,
                "frac_of_peak": bw / peak if peak else None,
            }
        rows.append(row)
    return {
        "device": name,
        "hbm_peak_tbps": peak / 1e12 if peak else None,
        "shape": asdict(shape),
        "ep_size": args.ep_size,
        "num_local_experts": num_local,
        "dtype": "bfloat16",
        "timing": "cuda_graph" if args.cuda_graph else "do_bench (L2 flushed), median",
        "triton_config": args.triton_config or "heuristic",
        "torch": torch.__version__,
        "verify_max_rel_err": errors,
        "skipped": skipped,
        "rows": rows,
        "unix_time": time.time(),
    }


def markdown(result: dict) -> str:
    impls = list(result["rows"][0]["impls"]) if result["rows"] else []
    peak = result["hbm_peak_tbps"]
    head = ["T", "experts", "MiB"]
    for impl in impls:
        head += [f"{impl} us", f"{impl} TB/s", f"{impl} % peak"]
    lines = [
        f"MXFP4 MoE on {result['device']} (HBM peak {peak if peak else '?'} TB/s), "
        f"shape {result['shape']}, EP {result['ep_size']}, {result['timing']}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in result["rows"]:
        cells = [str(row["tokens"]), str(row["touched_experts"]), f"{row['weight_bytes'] / 2**20:.1f}"]
        for impl in impls:
            r = row["impls"][impl]
            frac = f"{100 * r['frac_of_peak']:.1f}" if r["frac_of_peak"] is not None else "?"
            cells += [f"{1e3 * r['ms']:.1f}", f"{r['tbps']:.2f}", frac]
        lines.append("| " + " | ".join(cells) + " |")
    if result["verify_max_rel_err"]:
        errors = ", ".join(f"{k} {v:.2e}" for k, v in result["verify_max_rel_err"].items())
        lines += ["", f"max |err| / max |ref| at T=8: {errors}"]
    for impl, why in result["skipped"].items():
        lines.append(f"skipped {impl}: {why}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="model config.json to read MoE sizes from (default: DeepSeek-V4-Flash sizes)")
    p.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS), help="token counts T")
    p.add_argument(
        "--impls", nargs="+", default=["triton", "flashinfer", "dequant_bf16"],
        choices=["triton", "flashinfer", "dequant_bf16"],
    )
    p.add_argument("--ep-size", type=int, default=1, help="time one rank of this many expert-parallel ranks")
    p.add_argument("--no-swiglu-limit", action="store_true", help="disable the SwiGLU clamp")
    p.add_argument("--warmup", type=int, default=25, help="warm-up time per measurement, ms")
    p.add_argument("--rep", type=int, default=200, help="measurement time per point, ms")
    p.add_argument("--cuda-graph", action="store_true", help="time CUDA-graph replays (no launch overhead)")
    p.add_argument(
        "--triton-config", metavar="BM,BN,BK,WARPS,STAGES", help="fixed Triton tiles instead of the heuristic"
    )
    p.add_argument("--hbm-peak-tbps", type=float, help="override the HBM peak (TB/s)")
    p.add_argument("--no-verify", action="store_true", help="skip the accuracy check against the torch reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    print(markdown(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
