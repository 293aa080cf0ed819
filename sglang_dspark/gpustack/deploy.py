"""``sglang-dspark gpustack deploy``: create the model on GPUStack and follow its instances."""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass, replace
from typing import Any, Callable

from sglang_dspark.gpustack.backend_file import ModelTemplate
from sglang_dspark.gpustack.client import GPUStackClient, GPUStackError
from sglang_dspark.gpustack.register import backend_path

RUNNING = "running"
FAILED = ("error", "failed", "unreachable")


@dataclass(frozen=True)
class DeployResult:
    """What ``deploy`` did and the last instance states it saw."""

    model: dict[str, Any]
    created: bool
    instance_states: tuple[str, ...]
    outcome: str  # "running", "failed", "timeout" or "not-waited"


def pick_cluster(client: GPUStackClient, cluster_id: int | None) -> int:
    """``cluster_id`` if given and present, else the default (or only) cluster.

    Raises:
        GPUStackError: no cluster exists, or the one asked for is missing.
    """
    clusters = client.get("/v2/clusters").get("items", [])
    if cluster_id is not None:
        if not any(c["id"] == cluster_id for c in clusters):
            raise GPUStackError(f"GPUStack has no cluster {cluster_id}")
        return cluster_id
    if not clusters:
        raise GPUStackError(
            "GPUStack has no cluster yet: create one (Clusters page, or POST /v2/clusters) and add GPU workers to it"
        )
    default = [c for c in clusters if c.get("is_default")] or clusters
    return int(default[0]["id"])


def find_model(client: GPUStackClient, name: str, cluster_id: int) -> dict[str, Any] | None:
    """The model named ``name`` in ``cluster_id``, if there is one."""
    page = client.get("/v2/models?" + urllib.parse.urlencode({"search": name, "perPage": 100}))
    for item in page.get("items", []):
        if item.get("name") == name and item.get("cluster_id") == cluster_id:
            return item
    return None


def model_body(template: ModelTemplate, cluster_id: int) -> dict[str, Any]:
    """The ``POST /v2/models`` body for ``template``."""
    return {
        "name": template.name,
        "source": template.source,
        "model_scope_model_id": template.model_scope_model_id,
        "backend": template.backend,
        "backend_version": template.backend_version,
        "backend_parameters": list(template.backend_parameters),
        "replicas": template.replicas,
        "env": dict(template.env) or None,
        "cluster_id": cluster_id,
    }


def deploy_model(
    client: GPUStackClient,
    template: ModelTemplate,
    *,
    cluster_id: int | None = None,
    name: str | None = None,
    wait_s: float = 1800.0,
    poll_s: float = 5.0,
    log: Callable[[str], None] = print,
) -> DeployResult:
    """Create the model (or reuse one of that name) and wait until an instance runs.

    Raises:
        GPUStackError: the backend version is not registered, no cluster
            exists, or a request failed.
    """
    if name:
        template = replace(template, name=name)
    backend = client.get(backend_path(template.backend), missing_ok=True) or {}
    if template.backend_version not in (backend.get("version_configs") or {}):
        raise GPUStackError(
            f"backend {template.backend} has no version {template.backend_version}: "
            "run `sglang-dspark gpustack register` first"
        )
    cid = pick_cluster(client, cluster_id)
    model = find_model(client, template.name, cid)
    created = model is None
    if created:
        model = client.post("/v2/models", model_body(template, cid))
        log(f"model {template.name} created (id {model['id']}, cluster {cid}, "
            f"{template.backend} {template.backend_version})")
    else:
        log(f"model {template.name} already exists (id {model['id']}, cluster {cid}); not changed")
    if wait_s <= 0:
        return DeployResult(model, created, (), "not-waited")
    return _wait(client, model, created, wait_s, poll_s, log)


def _wait(client, model, created, wait_s, poll_s, log) -> DeployResult:
    deadline = time.monotonic() + wait_s
    seen: dict[str, str] = {}
    states: tuple[str, ...] = ()
    while True:
        items = client.get(f"/v2/models/{model['id']}/instances").get("items", [])
        states = tuple(str(i.get("state")) for i in items)
        for inst in items:
            line = f"{inst.get('state')}" + (f" ({inst['state_message']})" if inst.get("state_message") else "")
            if seen.get(inst["name"]) != line:
                seen[inst["name"]] = line
                log(f"instance {inst['name']}: {line}")
        if not items and "" not in seen:
            seen[""] = "none"
            log("waiting for GPUStack to create an instance")
        if RUNNING in states:
            log(f"model {model['name']} is running")
            return DeployResult(model, created, states, "running")
        if states and all(s in FAILED for s in states):
            log(f"model {model['name']}: every instance failed; see the instance logs in GPUStack")
            return DeployResult(model, created, states, "failed")
        if time.monotonic() >= deadline:
            log(f"gave up waiting after {wait_s:g} s; instances: {', '.join(states) or 'none'} "
                "(the model stays deployed; GPUStack keeps scheduling it)")
            return DeployResult(model, created, states, "timeout")
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
