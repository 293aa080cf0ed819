"""``sglang-dspark gpustack register``: add or update one version of a built-in backend.

GPUStack's ``PUT /v2/inference-backends/{id}`` replaces the whole backend, so
the backend is read first and written back with only
``version_configs[<version>]`` changed; when that version already holds the
same configuration nothing is written at all.
"""

from __future__ import annotations

import copy
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable

from sglang_dspark.gpustack.backend_file import BackendVersion, check_version_name
from sglang_dspark.gpustack.client import GPUStackClient, GPUStackError

# Fields GPUStack fills in itself; everything else is sent back as it was read.
_SERVER_OWNED = ("id", "created_at", "updated_at", "deleted_at")
# A version read back may carry fields GPUStack adds (source_name, ...): compare only ours.
_COMPARED = ("image_name", "run_command", "entrypoint", "custom_framework", "env")


@dataclass(frozen=True)
class RegisterResult:
    """What ``register`` did."""

    backend_id: int
    version: str
    action: str  # "added", "updated" or "unchanged"
    backend: dict[str, Any]


def backend_path(backend_name: str) -> str:
    """The GET path of a backend by name."""
    return "/v2/inference-backends/backend_name/" + urllib.parse.quote(backend_name, safe="")


def merged_backend(backend: dict[str, Any], version: BackendVersion) -> tuple[dict[str, Any], str]:
    """The PUT body: ``backend`` with ``version`` added or replaced, and the action taken."""
    body = {k: copy.deepcopy(v) for k, v in backend.items() if k not in _SERVER_OWNED}
    versions = dict(body.get("version_configs") or {})
    wanted = version.version_config()
    current = versions.get(version.name)
    if current is not None and all(_same(current.get(k), wanted[k]) for k in _COMPARED):
        return body, "unchanged"
    action = "added" if current is None else "updated"
    versions[version.name] = {**(current or {}), **wanted}
    body["version_configs"] = versions
    return body, action


def _same(have: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return dict(have or {}) == want
    return have == want


def register_version(
    client: GPUStackClient, version: BackendVersion, log: Callable[[str], None] = print
) -> RegisterResult:
    """Add ``version`` to its backend on the server (idempotent).

    Raises:
        GPUStackError: the backend does not exist, or any request failed.
        ValueError: the version name lacks GPUStack's ``-custom`` suffix.
    """
    check_version_name(version.name)
    path = backend_path(version.backend_name)
    backend = client.get(path, missing_ok=True)
    if backend is None:
        # 2.3.0 answers 400 for an unknown name; 404 means the route itself is missing.
        raise GPUStackError(
            f"GPUStack at {client.base} has no GET {path} (404): this needs GPUStack 2.x "
            "with inference backends (2.3.0 was tested); upgrade the server."
        )
    if not isinstance(backend, dict) or "id" not in backend:
        raise GPUStackError(f"GPUStack answered GET {path} with no backend object")
    body, action = merged_backend(backend, version)
    log(f"backend {version.backend_name} (id {backend['id']}): version {version.name} {action}")
    if action == "unchanged":
        return RegisterResult(backend["id"], version.name, action, backend)
    stored = client.put(f"/v2/inference-backends/{backend['id']}", body)
    got = (stored or {}).get("version_configs", {}).get(version.name)
    if got is None or not all(_same(got.get(k), version.version_config()[k]) for k in _COMPARED):
        raise GPUStackError(
            f"GPUStack accepted the update but does not hold version {version.name} as sent"
        )
    return RegisterResult(backend["id"], version.name, action, stored)
