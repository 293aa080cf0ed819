"""Mixture-of-experts with MXFP4 expert weights.

* :mod:`~sglang_dspark.moe.mxfp4`: the format (E2M1 codes, nibble order, E8M0
  scales), quantise/dequantise.
* :mod:`~sglang_dspark.moe.moe_forward`: ``moe_forward`` with torch, Triton
  (``kernels/mxfp4_moe``) and FlashInfer implementations, plus the
  tensor-parallel weight split.
* :mod:`~sglang_dspark.moe.flashinfer_mxfp4`: the FlashInfer adapter.
* :mod:`~sglang_dspark.moe.expert_sharding`: which experts and intermediate
  columns an (EP, TP) rank keeps, copied from per-expert checkpoint tensors.
"""
