"""Request checks SGLang 0.5.23 lacks, applied where it validates requests.

Two inputs reach the scheduler unchecked and kill it:

- an empty prompt (no token ids, no embeddings, no multimodal data) becomes
  a zero-token prefill (a reshape of an empty tensor in the rotary embedding);
- ``input_ids`` outside ``[0, vocab_size)`` index past the embedding table;
- ``top_logprobs_num`` above the vocabulary size fails ``topk`` in the sampler.

The checks turn both into a 400 in the tokenizer manager, before anything is
scheduled.
"""

from __future__ import annotations

TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request"

_OTHER_INPUTS = ("input_embeds", "image_data", "video_data", "audio_data")


def check_prompt_tokens(orig, self, obj, input_ids, *args, **kwargs):
    """AROUND hook on ``_validate_one_request``: empty or out-of-vocabulary prompts are client errors."""
    if not input_ids and all(getattr(obj, name, None) is None for name in _OTHER_INPUTS):
        raise ValueError(
            "The prompt is empty (0 tokens after tokenization): send at least one token."
        )
    vocab_size = getattr(getattr(self, "model_config", None), "vocab_size", None)
    if input_ids and vocab_size:
        low, high = min(input_ids), max(input_ids)
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"input_ids contains out-of-vocabulary token id {bad}; valid range is [0, {vocab_size})."
            )
    top = getattr(obj, "top_logprobs_num", None)
    if vocab_size and isinstance(top, int) and top > vocab_size:
        raise ValueError(
            f"top_logprobs_num (OpenAI: logprobs / top_logprobs) is {top}, more than the "
            f"vocabulary ({vocab_size} tokens)."
        )
    return orig(self, obj, input_ids, *args, **kwargs)
