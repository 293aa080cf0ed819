"""Reads ``gpustack/dspark-backend.yaml``: the DSPARK backend version and the model template."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

CUSTOM_SUFFIX = "-custom"


@dataclass(frozen=True)
class BackendVersion:
    """One user-added version of a built-in GPUStack backend (GPUStack's VersionConfig fields)."""

    backend_name: str
    name: str
    image_name: str
    entrypoint: str
    run_command: str
    custom_framework: str
    env: dict[str, str] = field(default_factory=dict)

    def version_config(self) -> dict[str, Any]:
        """The JSON object GPUStack stores under ``version_configs[name]``."""
        return {
            "image_name": self.image_name,
            "run_command": self.run_command,
            "entrypoint": self.entrypoint,
            "custom_framework": self.custom_framework,
            "env": dict(self.env),
        }


@dataclass(frozen=True)
class ModelTemplate:
    """The GPUStack model to create (fields as GPUStack's ``POST /v2/models`` takes them)."""

    name: str
    source: str
    model_scope_model_id: str
    backend: str
    backend_version: str
    replicas: int
    backend_parameters: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PreflightTarget:
    """The node ``gpustack deploy`` preflights the template for, unless told another."""

    gpu: str = "H20-141G"
    gpus: int = 8

    def __post_init__(self) -> None:
        if self.gpus < 1:
            raise ValueError(f"preflight.gpus must be at least 1, got {self.gpus}")


@dataclass(frozen=True)
class BackendFile:
    """Everything ``dspark-backend.yaml`` holds."""

    version: BackendVersion
    model: ModelTemplate
    preflight: PreflightTarget = field(default_factory=PreflightTarget)


def default_backend_file() -> Path:
    """The YAML shipped inside the package (a copy of the repository's ``gpustack/dspark-backend.yaml``)."""
    return Path(str(resources.files("sglang_dspark.gpustack").joinpath("dspark-backend.yaml")))


def load_backend_file(path: str | Path | None = None) -> BackendFile:
    """Parse and check a backend file.

    Raises:
        ValueError: a missing field, more or fewer than one version, or a
            version name without GPUStack's required ``-custom`` suffix.
    """
    path = Path(path) if path is not None else default_backend_file()
    raw = yaml.safe_load(path.read_text())
    try:
        backend_name = str(raw["backend_name"])
        versions = raw["version_configs"]
        if len(versions) != 1:
            raise ValueError(f"{path}: version_configs must hold exactly one version")
        ((name, cfg),) = versions.items()
        version = BackendVersion(
            backend_name=backend_name,
            name=str(name),
            image_name=str(cfg["image_name"]),
            entrypoint=str(cfg["entrypoint"]),
            run_command=str(cfg["run_command"]),
            custom_framework=str(cfg["custom_framework"]),
            env={str(k): str(v) for k, v in (cfg.get("env") or {}).items()},
        )
        m = raw["model_template"]
        model = ModelTemplate(
            name=str(m["name"]),
            source=str(m["source"]),
            model_scope_model_id=str(m["model_scope_model_id"]),
            backend=str(m["backend"]),
            backend_version=str(m["backend_version"]),
            replicas=int(m["replicas"]),
            backend_parameters=tuple(str(p) for p in m["backend_parameters"]),
            env={str(k): str(v) for k, v in (m.get("env") or {}).items()},
        )
        target = PreflightTarget(**{str(k): v for k, v in (raw.get("preflight") or {}).items()})
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: malformed backend file ({e!r})") from None
    check_version_name(version.name)
    return BackendFile(version=version, model=model, preflight=target)


def check_version_name(name: str) -> None:
    """GPUStack 2.3.0 refuses user-added versions of built-in backends not ending in ``-custom``."""
    if not name.endswith(CUSTOM_SUFFIX) or name == CUSTOM_SUFFIX:
        raise ValueError(
            f"version name {name!r}: GPUStack requires user-added versions to end in "
            f"{CUSTOM_SUFFIX!r} (for example 'dspark-custom')"
        )
