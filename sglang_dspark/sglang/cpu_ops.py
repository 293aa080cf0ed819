"""Pure-torch ``torch.ops.sgl_kernel`` CPU ops that SGLang 0.5.23 calls on CPUs without AMX.

SGLang's CPU engine takes native-torch paths for Llama, Qwen2/Qwen3, Mixtral and
Qwen2/Qwen3-MoE on an x86 CPU without AMX, but a few ``torch.ops.sgl_kernel``
ops are reached on that CPU anyway, and the published sgl-kernel wheel (CUDA
only) does not register them:

* ``murmur_hash32_cpu``: ``sglang.kernels.ops.sampling.murmur_hash.murmur_hash32``
  calls it for every CPU tensor (seeded sampling, ``multinomial_with_seed``).
  The server only seeds sampling under ``--enable-deterministic-inference``,
  which SGLang 0.5.23 refuses with the CPU attention backends, so a server
  does not reach it today; direct callers of the sampler do.
* ``fused_sigmoid_mul_cpu``, ``fused_qk_gemma_rmsnorm_cpu``,
  ``fused_qk_gemma_rmsnorm_with_gate_cpu``,
  ``fused_qkvzba_split_reshape_cat_contiguous_cpu``: looked up when
  ``sglang.srt.models.qwen3_5`` (and ``muse_glimmer``) is imported with
  ``SGLANG_USE_CPU_ENGINE=1`` and called by its forward. Without them the model
  registry drops those modules and every module importing them ("Ignore import
  error when loading sglang.srt.models.qwen3_5: ... fused_sigmoid_mul_cpu").

* ``init_cpu_threads_env``, ``initialize``, ``shm_allreduce``,
  ``shm_allgather``: the CPU tensor-parallel collectives SGLang calls on arm64
  (and with AMX), over gloo: see :mod:`.cpu_collectives`.

Each op has the schema of the real CPU build of sgl-kernel (upstream
``python/sglang/kernels/aot/csrc/cpu/``: ``torch_extension_cpu.cpp`` and, for
``murmur_hash32_cpu``, its own source file) and the semantics of the kernel
SGLang uses for the same job on GPUs. ``register_cpu_ops()`` defines only the
ops that do not exist yet, so a real CPU sgl-kernel build, if installed, keeps
its own kernels.

``install_cpu_fallbacks()`` is separate and optional: Python-level fixes for
SGLang helpers that are broken on a CPU without AMX whatever sgl-kernel holds:

* ``fused_gate_sigmoid_mul[_add]`` (Qwen2-MoE's shared-expert gate) is
  Triton-only, and without AMX ``Qwen2MoeSparseMoeBlock`` takes that path, so
  the first forward fails with "0 active drivers ([]). There should only be
  one." CPU tensors now take a torch path.
* ``moe_forward_native`` (the CPU MoE without AMX) fails under ``--ep-size > 1``
  with "index -1 is out of bounds": the dispatcher marks experts of other ranks
  -1. The wrapper computes only this rank's experts.
* ``get_masked_input_and_mask`` (``VocabParallelEmbedding`` at ``--tp-size > 1``)
  is ``torch.compile``-d with inductor. On CPU that compiles C++ with gcc in
  every rank on the first request: 19 s of a 43 s two-rank start on an idle
  2-core machine (one rank starts in 21 s), and minutes on a loaded one, for
  six element-wise ops on a few token ids. CPU tensors run the same function
  eagerly; other devices keep the compiled one.

Deliberately absent: ops SGLang probes with ``hasattr`` to choose a code path
(``convert_weight_packed`` switches the whole AMX backend on;
``fused_qk_norm_cpu``, ``fused_qk_norm_rope_cpu``), and the AMX-only ops
(``weight_packed_linear``, ``fused_experts_cpu``, ...), which SGLang only calls
once ``convert_weight_packed`` exists.
"""

from __future__ import annotations

import functools
import threading
from typing import Callable

import torch

from sglang_dspark.sglang.cpu_collectives import COLLECTIVE_OP_SCHEMAS

__all__ = ["CPU_OP_SCHEMAS", "install_cpu_fallbacks", "register_cpu_ops"]

_NAMESPACE = "sgl_kernel"
_M32 = 0xFFFFFFFF

# ---------------------------------------------------------------------------- murmur_hash32


def _rotl32(x: torch.Tensor, r: int) -> torch.Tensor:
    return ((x << r) | (x >> (32 - r))) & _M32


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # int64 products wrap modulo 2**64, which keeps the low 32 bits exact.
    return (x * c) & _M32


def _murmur3_mix(h: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    k = _mul32(k, 0xCC9E2D51)
    k = _rotl32(k, 15)
    k = _mul32(k, 0x1B873593)
    h = h ^ k
    h = _rotl32(h, 13)
    return (h * 5 + 0xE6546B64) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _as_int64_bits(t: torch.Tensor) -> torch.Tensor:
    """The 64-bit pattern of an int64/uint64 tensor as int64 (no value conversion)."""
    if t.dtype == torch.uint64:
        return t.contiguous().view(torch.int64)
    return t.to(torch.int64)


def murmur_hash32_cpu(seed: torch.Tensor, positions: torch.Tensor, col_indices: torch.Tensor) -> torch.Tensor:
    """[n, m] uint32 MurmurHash3 of (seed_lo, seed_hi, position, column), as ``murmur_hash32_kernel``."""
    if seed.dim() != 1 or positions.dim() != 1 or col_indices.dim() != 1:
        raise ValueError("murmur_hash32_cpu takes 1-D seed, positions and col_indices")
    if seed.shape != positions.shape:
        raise ValueError("seed and positions must have the same length")
    s = _as_int64_bits(seed)
    lo = (s & _M32)[:, None]
    hi = ((s >> 32) & _M32)[:, None]
    pos = (_as_int64_bits(positions) & _M32)[:, None]
    col = (col_indices.to(torch.int64) & _M32)[None, :]
    h = torch.zeros((), dtype=torch.int64, device=seed.device)
    h = _murmur3_mix(h, lo)
    h = _murmur3_mix(h, hi)
    h = _murmur3_mix(h, pos)
    h = _murmur3_mix(h, col)
    h = _fmix32(h ^ 16)
    return h.expand(seed.shape[0], col_indices.shape[0]).to(torch.uint32)


def _murmur_hash32_fake(seed, positions, col_indices):
    return seed.new_empty((seed.shape[0], col_indices.shape[0]), dtype=torch.uint32)


# ---------------------------------------------------------------------------- Qwen3.5 helpers


def fused_sigmoid_mul_cpu(input: torch.Tensor, gate: torch.Tensor) -> None:
    """input *= sigmoid(gate) in place (fp32 math); a 3-D [tokens, heads, head_dim]
    gate view serves a 2-D [tokens, heads * head_dim] input, as ``fused_sigmoid_mul``."""
    if gate.dim() == 3 and input.dim() == 2:
        gate = gate.reshape(input.shape)
    elif gate.shape != input.shape:
        raise ValueError(f"gate {tuple(gate.shape)} does not match input {tuple(input.shape)}")
    input.copy_((input.float() * torch.sigmoid(gate.float())).to(input.dtype))


def _gemma_rmsnorm_rows(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    var = xf.pow(2).mean(-1, keepdim=True)
    return (xf * torch.rsqrt(var + eps) * (1.0 + weight.float())).to(x.dtype).contiguous()


def fused_qk_gemma_rmsnorm_cpu(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma RMSNorm (x * rsqrt(mean(x^2) + eps) * (1 + w)) of every head of q and k.

    Returns contiguous [rows, head_dim] tensors, as ``models.utils.fused_qk_gemma_rmsnorm``.
    """
    return (
        _gemma_rmsnorm_rows(q.reshape(-1, head_dim), q_weight, eps),
        _gemma_rmsnorm_rows(k.reshape(-1, head_dim), k_weight, eps),
    )


def fused_qk_gemma_rmsnorm_with_gate_cpu(
    q_gate: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    eps: float,
    head_dim: int,
    num_head: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q_gate holds [q_h0, gate_h0, q_h1, gate_h1, ...] per token: return the normed q,
    the normed k and the gate, each contiguous [rows, head_dim]."""
    qg = q_gate.reshape(q_gate.shape[0], num_head, 2 * head_dim)
    q = qg[..., :head_dim].reshape(-1, head_dim)
    gate = qg[..., head_dim:].reshape(-1, head_dim).contiguous()
    return (
        _gemma_rmsnorm_rows(q, q_weight, eps),
        _gemma_rmsnorm_rows(k.reshape(-1, head_dim), k_weight, eps),
        gate,
    )


def fused_qkvzba_split_reshape_cat_contiguous_cpu(
    mixed_qkvz: torch.Tensor,
    mixed_ba: torch.Tensor,
    num_heads_qk: int,
    num_heads_v: int,
    head_qk: int,
    head_v: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """[q | k | v | z] and [b | a] per token -> ([q | k | v], z [T, Hv, Dv], b [T, Hv], a [T, Hv])."""
    k_dim = num_heads_qk * head_qk
    v_dim = num_heads_v * head_v
    if mixed_qkvz.shape[-1] != 2 * k_dim + 2 * v_dim or mixed_ba.shape[-1] != 2 * num_heads_v:
        raise ValueError("mixed_qkvz / mixed_ba widths do not match the head counts")
    qkv = mixed_qkvz[:, : 2 * k_dim + v_dim].contiguous()
    z = mixed_qkvz[:, 2 * k_dim + v_dim :].reshape(-1, num_heads_v, head_v).contiguous()
    b = mixed_ba[:, :num_heads_v].contiguous()
    a = mixed_ba[:, num_heads_v:].contiguous()
    return qkv, z, b, a


# ---------------------------------------------------------------------------- registration

# name -> (schema, implementation, fake implementation or None).
# Fakes are registered only where SGLang's CPU graph runner does not register its
# own (cpu_graph_runner.register_fake_ops would fail on a second fake).
CPU_OP_SCHEMAS: dict[str, tuple[str, Callable, Callable | None]] = {
    "murmur_hash32_cpu": (
        "murmur_hash32_cpu(Tensor seed, Tensor positions, Tensor col_indices) -> Tensor",
        murmur_hash32_cpu,
        _murmur_hash32_fake,
    ),
    "fused_sigmoid_mul_cpu": (
        "fused_sigmoid_mul_cpu(Tensor(a!) input, Tensor gate) -> ()",
        fused_sigmoid_mul_cpu,
        None,
    ),
    "fused_qk_gemma_rmsnorm_cpu": (
        "fused_qk_gemma_rmsnorm_cpu(Tensor q, Tensor k, Tensor q_weight, Tensor k_weight, float eps, "
        "int head_dim) -> (Tensor, Tensor)",
        fused_qk_gemma_rmsnorm_cpu,
        None,
    ),
    "fused_qk_gemma_rmsnorm_with_gate_cpu": (
        "fused_qk_gemma_rmsnorm_with_gate_cpu(Tensor q_gate, Tensor k, Tensor q_weight, Tensor k_weight, "
        "float eps, int head_dim, int num_head) -> (Tensor, Tensor, Tensor)",
        fused_qk_gemma_rmsnorm_with_gate_cpu,
        None,
    ),
    "fused_qkvzba_split_reshape_cat_contiguous_cpu": (
        "fused_qkvzba_split_reshape_cat_contiguous_cpu(Tensor mixed_qkvz, Tensor mixed_ba, int num_heads_qk, "
        "int num_heads_v, int head_qk, int head_v) -> (Tensor, Tensor, Tensor, Tensor)",
        fused_qkvzba_split_reshape_cat_contiguous_cpu,
        None,
    ),
}

CPU_OP_SCHEMAS.update(COLLECTIVE_OP_SCHEMAS)

_LOCK = threading.Lock()
_LIBRARY: torch.library.Library | None = None  # must stay alive: dropping it unregisters the ops


def _op_exists(name: str) -> bool:
    return hasattr(torch.ops.sgl_kernel, name)


def register_cpu_ops() -> list[str]:
    """Define the ops of CPU_OP_SCHEMAS that ``torch.ops.sgl_kernel`` lacks; return their names.

    Idempotent: a second call (or a call after a real CPU sgl-kernel build has
    registered them) registers nothing and returns [].
    """
    global _LIBRARY
    registered: list[str] = []
    with _LOCK:
        try:
            import sgl_kernel  # noqa: F401  (a real build registers its ops on import)
        except Exception:
            pass
        for name, (schema, impl, fake) in CPU_OP_SCHEMAS.items():
            if _op_exists(name):
                continue
            if _LIBRARY is None:
                _LIBRARY = torch.library.Library(_NAMESPACE, "FRAGMENT")
            _LIBRARY.define(schema)
            # Ops without tensor arguments dispatch on no device key.
            _LIBRARY.impl(name, impl, "CPU" if "Tensor" in schema else "CompositeExplicitAutograd")
            if fake is not None:
                torch.library.register_fake(f"{_NAMESPACE}::{name}", fake, lib=_LIBRARY)
            registered.append(name)
    return registered


# ---------------------------------------------------------------------------- Python-level fallbacks
# Not ops: wrappers for SGLang helpers that fail on CPU (see the module docstring).


def fused_gate_sigmoid_mul_torch(
    hidden_states: torch.Tensor, gate_weight: torch.Tensor, shared_output: torch.Tensor
) -> torch.Tensor:
    """sigmoid(hidden_states @ gate_weight)[:, None] * shared_output (fp32 math), as the Triton kernel."""
    gate = torch.sigmoid(hidden_states.float() @ gate_weight.float().reshape(-1))
    return (gate[:, None] * shared_output.float()).to(shared_output.dtype)


def fused_gate_sigmoid_mul_add_torch(
    hidden_states: torch.Tensor,
    gate_weight: torch.Tensor,
    shared_output: torch.Tensor,
    final_hidden_states: torch.Tensor,
) -> None:
    """final_hidden_states += sigmoid(hidden_states @ gate_weight)[:, None] * shared_output, in place."""
    gate = torch.sigmoid(hidden_states.float() @ gate_weight.float().reshape(-1))
    out = final_hidden_states.float() + gate[:, None] * shared_output.float()
    final_hidden_states.copy_(out.to(final_hidden_states.dtype))


def ep_safe_moe_forward_native(original: Callable) -> Callable:
    """Wrap ``fused_moe_native.moe_forward_native`` so it accepts expert-parallel top-k ids.

    With ``--ep-size > 1`` SGLang's standard dispatcher maps global expert ids to
    this rank's local ids and marks experts of other ranks -1; the native CPU MoE
    then fails ("index -1 is out of bounds"). The wrapper runs the original on
    the (token, slot) pairs routed to local experts only, one slot per row, and
    sums them per token: this rank's partial output, which the caller's
    all-reduce completes.
    """

    @functools.wraps(original)
    def forward(layer, x, topk_output, moe_runner_config):
        topk_weights, topk_ids = topk_output[0], topk_output[1]
        if not bool((topk_ids < 0).any()):
            return original(layer, x, topk_output, moe_runner_config)
        rows, slots = (topk_ids >= 0).nonzero(as_tuple=True)
        out = torch.zeros_like(x)
        if rows.numel() == 0:
            return out
        sub_topk = (
            topk_weights[rows, slots].reshape(-1, 1),
            topk_ids[rows, slots].reshape(-1, 1),
            None,
        )
        partial = original(layer, x[rows], sub_topk, moe_runner_config)
        return out.index_add_(0, rows, partial.to(out.dtype))

    forward._sglang_dspark_cpu_fallback = True
    return forward


def _cpu_tensor_fallback(fallback: Callable) -> Callable[[Callable], Callable]:
    return lambda original: _cpu_dispatch(original, fallback)


def eager_on_cpu(compiled: Callable) -> Callable:
    """Wrap a ``torch.compile``-d function so that CPU tensors call the uncompiled original."""
    eager = getattr(compiled, "_torchdynamo_orig_callable", None) or getattr(compiled, "__wrapped__", None)
    if eager is None:
        return compiled
    return _cpu_dispatch(compiled, eager)


# (module, attribute, wrapper factory, import the module if it is not loaded yet).
# The gate helpers are patched where they are defined (so model modules imported
# later bind the wrapper) and in qwen2_moe if it already bound them.
_FALLBACK_PATCHES = (
    ("sglang.kernels.ops.elementwise.elementwise", "fused_gate_sigmoid_mul",
     _cpu_tensor_fallback(fused_gate_sigmoid_mul_torch), True),
    ("sglang.kernels.ops.elementwise.elementwise", "fused_gate_sigmoid_mul_add",
     _cpu_tensor_fallback(fused_gate_sigmoid_mul_add_torch), True),
    ("sglang.srt.models.qwen2_moe", "fused_gate_sigmoid_mul",
     _cpu_tensor_fallback(fused_gate_sigmoid_mul_torch), False),
    ("sglang.srt.models.qwen2_moe", "fused_gate_sigmoid_mul_add",
     _cpu_tensor_fallback(fused_gate_sigmoid_mul_add_torch), False),
    ("sglang.srt.layers.moe.fused_moe_native", "moe_forward_native", ep_safe_moe_forward_native, True),
    ("sglang.srt.layers.vocab_parallel_embedding", "get_masked_input_and_mask", eager_on_cpu, True),
)
_FALLBACK_MODULES = tuple(dict.fromkeys(m for m, _, _, _ in _FALLBACK_PATCHES))


def _cpu_dispatch(original: Callable, fallback: Callable) -> Callable:
    @functools.wraps(original)
    def dispatch(hidden_states, *args, **kwargs):
        if hidden_states.device.type == "cpu":
            return fallback(hidden_states, *args, **kwargs)
        return original(hidden_states, *args, **kwargs)

    dispatch._sglang_dspark_cpu_fallback = True
    return dispatch


def install_cpu_fallbacks() -> list[str]:
    """Patch SGLang's CPU-broken Python helpers (see _FALLBACK_PATCHES); return the patched names.

    * ``fused_gate_sigmoid_mul[_add]`` (Triton only; Qwen2-MoE's shared-expert
      gate without AMX): CPU tensors take a torch path, others the original.
    * ``moe_forward_native`` (the CPU MoE without AMX): expert-parallel -1 ids.
    * ``get_masked_input_and_mask`` (vocab-parallel embedding at TP > 1):
      eager on CPU instead of an inductor compile at the first request.

    Idempotent; call it in every SGLang process (the plugin's load hook).
    """
    import importlib
    import sys

    patched: list[str] = []
    with _LOCK:
        for mod_name, attr, factory, do_import in _FALLBACK_PATCHES:
            module = importlib.import_module(mod_name) if do_import else sys.modules.get(mod_name)
            if module is None:
                continue
            current = getattr(module, attr, None)
            if current is None or getattr(current, "_sglang_dspark_cpu_fallback", False):
                continue
            setattr(module, attr, factory(current))
            patched.append(f"{mod_name}.{attr}")
    return patched
