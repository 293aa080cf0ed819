"""A tiny, self-contained Llama target for tests and smoke runs (no download, ~1 s).

* tokenizer: byte-level (256 byte tokens, no merges) plus ``<|endoftext|>``,
  ``<|im_start|>``, ``<|im_end|>`` and ``<mask>``, with a ChatML chat
  template like SmolLM2's (without the default system prompt, to keep
  sequences short);
* model: ``LlamaForCausalLM`` (hidden 64, 4 layers, 4 heads, 2 KV heads,
  vocabulary 260) with seeded random weights. The defaults (embedding and
  LM head N(0, 0.5), untied; layers N(0, 0.1)) give greedy continuations
  that depend on the context and settle into short cycles: a fixed,
  learnable function, but not one the drafter gets for free. (With tied or
  small-std embeddings and weak layers the next token is mostly
  ``argmax(E e_x)``, which an untrained drafter sharing the embedding and
  LM head already reproduces at its first position.)
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["TINY_MASK_TOKEN", "make_byte_tokenizer", "make_tiny_target"]

TINY_MASK_TOKEN = "<mask>"
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", TINY_MASK_TOKEN]
_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_byte_tokenizer():
    """A byte-level fast tokenizer (vocabulary 260) with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = ByteLevel.alphabet()
    byte_map = sorted(alphabet, key=lambda ch: _byte_of(ch))
    vocab = {ch: i for i, ch in enumerate(byte_map)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(_SPECIALS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def _byte_of(ch: str) -> int:
    """Inverse of GPT-2's bytes_to_unicode for one character."""
    code = ord(ch)
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def make_tiny_target(
    directory: str | Path,
    *,
    seed: int = 0,
    init_std: float = 0.5,
    layer_std: float | None = 0.1,
    num_layers: int = 4,
    tie_word_embeddings: bool = False,
) -> Path:
    """Write a tiny random Llama target (+ tokenizer) to ``directory``; returns it.

    Args:
        directory: created if missing.
        seed: weights are a function of the seed.
        init_std: std of the embedding and LM head (and of the layers unless
            ``layer_std`` is given).
        layer_std: std of the decoder layers' weights. Small values make the
            next token mostly a function of the current one (a "bigram"
            target whose greedy continuation is easy to learn).
        num_layers: decoder layers.
        tie_word_embeddings: share the embedding and the LM head.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = make_byte_tokenizer()
    vocab = len(tokenizer)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    bos = tokenizer.convert_tokens_to_ids("<|im_start|>")
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        initializer_range=init_std,
    )
    config.architectures = ["LlamaForCausalLM"]
    gen = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                std = init_std
                if layer_std is not None and ".layers." in name:
                    std = layer_std
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    if tie_word_embeddings:
        model.tie_weights()
    model.save_pretrained(str(directory))
    GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos).save_pretrained(
        str(directory)
    )
    tokenizer.save_pretrained(str(directory))
    return directory
