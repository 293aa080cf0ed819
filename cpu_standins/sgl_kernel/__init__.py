"""Pure-torch CPU stand-in for the parts of sgl_kernel that SGLang imports on CPU.

The published ``sglang-kernel`` wheel is CUDA-only, and SGLang's CPU build of
it is not on the package registry. With ``SGLANG_USE_CPU_ENGINE=1`` SGLang
imports a handful of helper names at module level; plain decoding calls none
of them. This package provides them in pure torch so SGLang imports and serves
on a CPU without AMX (where the Llama layers run native torch).
``sgl_kernel.speculative`` holds ``reconstruct_indices_from_tree_mask`` (NGRAM).
Ops under ``torch.ops.sgl_kernel`` are not registered here: see
``sglang_dspark.sglang.cpu_ops.register_cpu_ops``.
"""

from sgl_kernel.speculative_cpu import (  # noqa: F401
    assign_draft_cache_locs_contiguous_cpu,
    assign_extend_cache_locs_cpu,
    assign_req_to_token_pool_cpu,
    build_tree_kernel_efficient_cpu,
    copy_all_layer_kv_cache_cpu,
    fill_accept_out_cache_loc_cpu,
    fill_bonus_tokens_cpu,
    rotate_input_ids_cpu,
    verify_tree_greedy_cpu,
)

__version__ = "0.0.0+sglang-dspark-cpu-standin"
