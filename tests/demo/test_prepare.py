"""``python -m sglang_dspark.demo prepare``: the converted model equals the GGUF model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sglang_dspark.demo.__main__ import main as demo_main
from sglang_dspark.demo.prepare import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    find_gguf,
    is_complete,
    prepare_model,
)

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "<|im_start|>user\nWrite a haiku about rain.<|im_end|>\n<|im_start|>assistant\n",
]


def test_config_tokenizer_and_manifest(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is True
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (576, 30, 49152)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2)
    assert config.get("dtype", config.get("torch_dtype")) == "float32"
    assert "quantization_config" not in config
    generation = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["bos_token_id"] == 1

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                         add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nhi<|im_end|>" in text

    manifest = json.loads((smollm2_dir / MANIFEST_NAME).read_text())
    assert manifest["format"] == MANIFEST_FORMAT
    assert manifest["source"]["size"] == find_gguf().stat().st_size
    assert "lm_head.weight" not in _tensor_names(smollm2_dir)
    assert is_complete(smollm2_dir)


def _tensor_names(directory):
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), framework="pt") as handle:
        return set(handle.keys())


# ---------------------------------------------------------------------- #
# Independent reference: llama.cpp's layout straight from the GGUF
# ---------------------------------------------------------------------- #
def _gguf_weights():
    from gguf import GGUFReader, dequantize

    reader = GGUFReader(str(find_gguf()))
    weights = {t.name: torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
               for t in reader.tensors}
    return weights


def _rope_interleaved(x, positions, base):
    """llama.cpp LLAMA rope (pairs 2i, 2i+1) on [T, heads, D]: GGUF's q/k row order."""
    dim = x.shape[-1]
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    ang = positions[:, None].double() * inv[None, :]
    cos, sin = ang.cos().float()[:, None, :], ang.sin().float()[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def _reference_logits(w, ids, *, layers=30, heads=9, kv_heads=3, eps=1e-5, base=100000.0):
    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    x = w["token_embd.weight"][ids]
    T = len(ids)
    pos = torch.arange(T)
    mask = torch.full((T, T), float("-inf")).triu(1)
    for i in range(layers):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = (h @ w[p + "attn_q.weight"].T).view(T, heads, -1)
        k = (h @ w[p + "attn_k.weight"].T).view(T, kv_heads, -1)
        v = (h @ w[p + "attn_v.weight"].T).view(T, kv_heads, -1)
        q, k = _rope_interleaved(q, pos, base), _rope_interleaved(k, pos, base)
        rep = heads // kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1]) + mask
        att = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(T, -1)
        x = x + att @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        gate = h @ w[p + "ffn_gate.weight"].T
        x = x + (torch.nn.functional.silu(gate) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    x = rms(x, w["output_norm.weight"])
    head = w.get("output.weight", w["token_embd.weight"])
    return x @ head.T


def test_logits_match_the_gguf_model(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    assert model.dtype == torch.float32
    weights = _gguf_weights()
    # Weights: identical numbers (modulo the q/k row order llama.cpp uses for its RoPE).
    torch.testing.assert_close(model.model.embed_tokens.weight, weights["token_embd.weight"],
                               rtol=0, atol=0)
    torch.testing.assert_close(model.model.layers[7].mlp.down_proj.weight,
                               weights["blk.7.ffn_down.weight"], rtol=0, atol=0)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    for prompt in PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            got = model(torch.tensor([ids])).logits[0]
            want = _reference_logits(weights, torch.tensor(ids))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-3)
        assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_second_prepare_is_a_noop(smollm2_dir, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in smollm2_dir.iterdir()}
    result = prepare_model(model_dir=smollm2_dir, progress=False)
    assert result.path == smollm2_dir and not result.converted
    assert result.seconds < 10
    assert demo_main(["prepare", "--cache-dir", str(smollm2_dir.parent.parent)]) == 0
    assert capsys.readouterr().out.strip() == str(smollm2_dir)
    after = {p.name: p.stat().st_mtime_ns for p in smollm2_dir.iterdir()}
    assert before == after


def test_completeness_check_catches_damage(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"x" * 100)
    (model_dir / "config.json").write_text("{}")
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": {"sha256": "abc"},
        "files": {"model.safetensors": {"size": 100, "sha256": "0" * 64},
                  "config.json": {"size": 2, "sha256": "0" * 64}},
    }
    (model_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert is_complete(model_dir)
    assert is_complete(model_dir, source_sha256="abc")
    assert not is_complete(model_dir, source_sha256="other")  # a new GGUF means reconvert
    assert not is_complete(model_dir, verify_hashes=True)  # hashes do not match
    (model_dir / "model.safetensors").write_bytes(b"x" * 99)  # truncated
    assert not is_complete(model_dir)
    (model_dir / MANIFEST_NAME).unlink()
    assert not is_complete(model_dir)


def test_cli_has_prepare_subcommand():
    from sglang_dspark.demo.__main__ import build_parser

    parser = build_parser()
    args = parser.parse_args(["prepare", "--cache-dir", "/tmp/x"])
    assert args.command == "prepare" and args.cache_dir == "/tmp/x"
    with pytest.raises(SystemExit):
        parser.parse_args([])
