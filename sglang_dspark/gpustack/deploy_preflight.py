"""What ``sglang-dspark gpustack deploy`` checks before it creates anything: the model's serve command, preflighted.

The command a GPUStack worker will run is the backend version's
``run_command`` with GPUStack's placeholders filled, plus the model
template's backend parameters, under the version's and the model's
environment. :func:`preflight_template` resolves exactly that with
``sglang-dspark preflight`` on the operator's machine, over the checkpoint's
config and index files only (fetched from ModelScope by
:func:`fetch_model_configs`, a few MB), so a wrong parameter fails there and
not after an image pull on 8 GPUs.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sglang_dspark.gpustack.backend_file import BackendVersion, ModelTemplate

# Config, index, generation and tokenizer files, and remote code; never weights.
CONFIG_PATTERNS = ("*.json", "*.py", "*/*.json", "*/*.py")
PLACEHOLDERS = {"{{worker_ip}}": "127.0.0.1", "{{port}}": "30000"}


def serve_argv(version: BackendVersion, template: ModelTemplate, model_dir: str | Path) -> list[str]:
    """The ``sglang serve`` arguments GPUStack runs for ``template`` on ``version``, with the model at ``model_dir``."""
    run = version.run_command.replace("{{model_path}}", str(model_dir))
    for placeholder, value in PLACEHOLDERS.items():
        run = run.replace(placeholder, value)
    return run.split() + [word for parameter in template.backend_parameters for word in parameter.split()]


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def fetch_model_configs(model_id: str, dest: str | Path) -> Path:
    """Download ``model_id``'s config and index files (no weights) from ModelScope into ``dest``.

    Raises:
        RuntimeError: ModelScope could not provide them (network, unknown id).
    """
    from modelscope.hub.snapshot_download import snapshot_download

    try:
        return Path(snapshot_download(model_id, local_dir=str(dest), allow_patterns=list(CONFIG_PATTERNS)))
    except Exception as e:  # noqa: BLE001 - modelscope raises many unrelated types; the message is what matters
        raise RuntimeError(
            f"could not fetch {model_id}'s config files from ModelScope ({type(e).__name__}: {e}); "
            "pass --model-dir with a copy of its config.json and model.safetensors.index.json, "
            "or --skip-preflight"
        ) from None


def preflight_template(version: BackendVersion, template: ModelTemplate, model_dir: str | Path, *,
                       gpu: str, gpus: int):
    """``sglang-dspark preflight`` of what a worker will run (a :class:`~sglang_dspark.sglang.preflight.PreflightReport`)."""
    from sglang_dspark.sglang.preflight import preflight

    with _environment({**version.env, **template.env}):
        return preflight(serve_argv(version, template, model_dir), gpu=gpu, gpus=gpus)
