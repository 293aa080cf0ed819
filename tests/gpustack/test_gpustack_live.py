"""``sglang-dspark gpustack register|deploy`` against a real GPUStack 2.3.0 and PostgreSQL 15.

The tests in this module share one server and run in file order: the backend
is seeded with another custom version, registered, re-registered, updated, and
then a model is deployed with the registered version.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest

from sglang_dspark.gpustack.backend_file import load_backend_file
from sglang_dspark.gpustack.register import backend_path
from sglang_dspark.models.synthetic_v4 import write_real_shaped_v4_checkpoint
from tests.gpustack.conftest import LiveGPUStack, run_cli
from tests.gpustack.services import GPUSTACK_VENV, REPO, free_port

INSTALL_CHROMIUM = REPO / "gpustack" / "dev" / "install-chromium.sh"

pytestmark = pytest.mark.slow

SGLANG = backend_path("SGLang")
OTHER = {
    "image_name": "example/sglang-other:1.0",
    "run_command": "--model-path {{model_path}} --port {{port}}",
    "entrypoint": "python3 -m sglang.launch_server",
    "custom_framework": "cuda",
    "env": {"OTHER": "1"},
}


def _auth(live: LiveGPUStack, password_file=None) -> list[str]:
    return ["--server", live.server.url, "--username", "admin",
            "--password-file", str(password_file or live.password_file)]


def _no_secret(live: LiveGPUStack, proc) -> None:
    assert live.password not in proc.stdout + proc.stderr


def _without(obj: dict, *keys: str) -> dict:
    return {k: v for k, v in obj.items() if k not in keys}


@pytest.fixture(scope="module")
def seeded(gpustack_live: LiveGPUStack) -> dict:
    """The SGLang backend after another admin added a version and a description by hand."""
    backend = gpustack_live.admin.get(SGLANG)
    body = copy.deepcopy(backend)
    body["version_configs"] = {"other-custom": OTHER}
    body["description"] = "edited by hand"
    body["default_env"] = {"KEEP": "me"}
    gpustack_live.admin.put(f"/v2/inference-backends/{backend['id']}", body)
    return gpustack_live.admin.get(SGLANG)


def test_register_adds_version_and_keeps_everything_else(gpustack_live, seeded):
    proc = run_cli("gpustack", "register", *_auth(gpustack_live))
    assert proc.returncode == 0, proc.stderr
    assert "dspark-custom added" in proc.stdout
    _no_secret(gpustack_live, proc)

    after = gpustack_live.admin.get(SGLANG)
    want = load_backend_file().version
    got = after["version_configs"]["dspark-custom"]
    assert got["image_name"] == want.image_name
    assert got["entrypoint"] == "sglang serve"
    assert got["run_command"] == "--model-path {{model_path}} --host {{worker_ip}} --port {{port}}"
    assert got["custom_framework"] == "cuda"
    assert got["env"] == want.env
    # Everything else exactly as before (the other version, description, env, flags).
    assert after["version_configs"]["other-custom"] == seeded["version_configs"]["other-custom"]
    assert _without(after, "updated_at", "version_configs") == _without(seeded, "updated_at", "version_configs")
    assert set(after["version_configs"]) == {"other-custom", "dspark-custom"}


def test_register_twice_changes_nothing(gpustack_live, seeded):
    before = gpustack_live.admin.get(SGLANG)
    proc = run_cli("gpustack", "register", *_auth(gpustack_live))
    assert proc.returncode == 0, proc.stderr
    assert "dspark-custom unchanged" in proc.stdout
    assert gpustack_live.admin.get(SGLANG) == before  # not even updated_at moved


def test_register_with_new_image_updates_only_that_version(gpustack_live, seeded):
    before = gpustack_live.admin.get(SGLANG)
    image = "registry.example/sglang-dspark:0.1.0-test"
    proc = run_cli("gpustack", "register", *_auth(gpustack_live), "--image", image)
    assert proc.returncode == 0, proc.stderr
    assert "dspark-custom updated" in proc.stdout
    after = gpustack_live.admin.get(SGLANG)
    assert after["version_configs"]["dspark-custom"]["image_name"] == image
    assert after["version_configs"]["other-custom"] == before["version_configs"]["other-custom"]
    assert _without(after, "updated_at", "version_configs") == _without(before, "updated_at", "version_configs")
    # back to the file's image for the tests below
    assert run_cli("gpustack", "register", *_auth(gpustack_live)).returncode == 0


def test_register_with_api_key(gpustack_live, seeded):
    key = gpustack_live.admin.post("/v2/api-keys", {"name": "dspark-test"})["value"]
    proc = run_cli("gpustack", "register", "--server", gpustack_live.server.url, "--api-key", key)
    assert proc.returncode == 0, proc.stderr
    assert "unchanged" in proc.stdout
    assert key not in proc.stdout + proc.stderr


def test_wrong_password_is_a_clear_error(gpustack_live, tmp_path):
    wrong = "Wrong-" + gpustack_live.password[::-1]
    (tmp_path / "pw").write_text(wrong + "\n")
    before = gpustack_live.admin.get(SGLANG)
    proc = run_cli("gpustack", "register", *_auth(gpustack_live, tmp_path / "pw"))
    assert proc.returncode == 1
    assert "401" in proc.stderr and "refused the credentials" in proc.stderr
    assert wrong not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert gpustack_live.admin.get(SGLANG) == before


def test_unreachable_server_is_a_clear_error(gpustack_live):
    proc = run_cli("gpustack", "register", "--server", f"http://127.0.0.1:{free_port()}",
                   "--username", "admin", "--password-file", str(gpustack_live.password_file))
    assert proc.returncode == 1
    assert "cannot reach GPUStack" in proc.stderr and "Traceback" not in proc.stderr
    _no_secret(gpustack_live, proc)


def test_server_without_the_api_is_a_clear_error(gpustack_live):
    # A base path under which the real server has no inference-backend routes:
    # the 404 a GPUStack without that API answers.
    proc = run_cli("gpustack", "register", "--server", gpustack_live.server.url + "/gpustack-1",
                   "--username", "admin", "--password-file", str(gpustack_live.password_file))
    assert proc.returncode == 1
    assert "404" in proc.stderr and "GPUStack 2.x" in proc.stderr
    _no_secret(gpustack_live, proc)


def test_deploy_without_a_cluster_says_so(gpustack_live, seeded):
    assert gpustack_live.admin.get("/v2/clusters")["items"] == []
    proc = run_cli("gpustack", "deploy", *_auth(gpustack_live), "--wait", "0", "--skip-preflight")
    assert proc.returncode == 1
    assert "no cluster" in proc.stderr


@pytest.fixture(scope="module")
def v4_configs(tmp_path_factory) -> Path:
    """The real-shaped V4 checkpoint's config and index only: what deploy fetches from ModelScope."""
    full = write_real_shaped_v4_checkpoint(tmp_path_factory.mktemp("v4") / "DeepSeek-V4-Flash-DSpark")
    configs = tmp_path_factory.mktemp("v4-configs")
    for f in full.glob("*.json"):
        (configs / f.name).write_bytes(f.read_bytes())
    return configs


def test_deploy_with_a_wrong_parameter_creates_nothing(gpustack_live, seeded, v4_configs, tmp_path):
    gpustack_live.admin.post("/v2/clusters", {"name": "dspark-test"})
    bad = tmp_path / "backend.yaml"
    bad.write_text((REPO / "gpustack" / "dspark-backend.yaml").read_text().replace("--tp-size 8", "--tp-size 3"))
    proc = run_cli("gpustack", "deploy", *_auth(gpustack_live), "--backend-file", str(bad),
                   "--model-dir", str(v4_configs), "--wait", "0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ERROR ParallelArgumentError: --tp-size 3" in proc.stdout
    assert "preflight failed; nothing was created" in proc.stderr
    assert gpustack_live.admin.get("/v2/models")["items"] == []


def test_deploy_creates_the_model_and_reports_instance_state(gpustack_live, seeded, v4_configs):
    (cluster,) = gpustack_live.admin.get("/v2/clusters")["items"]
    proc = run_cli("gpustack", "deploy", *_auth(gpustack_live), "--wait", "15", "--poll", "1",
                   "--model-dir", str(v4_configs))
    # No GPU worker exists here: the instance is never placed, so the wait times out cleanly.
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "preflight of deepseek-v4-flash-dspark on 8x H20-141G:" in proc.stdout
    assert "configs only here" in proc.stdout and "preflight: the plan serves" in proc.stdout
    assert "created" in proc.stdout
    assert "instance deepseek-v4-flash-dspark-" in proc.stdout
    assert "gave up waiting after 15 s" in proc.stdout
    _no_secret(gpustack_live, proc)

    template = load_backend_file().model
    items = gpustack_live.admin.get("/v2/models?search=deepseek-v4-flash-dspark")["items"]
    (model,) = [m for m in items if m["name"] == template.name]
    assert model["source"] == "model_scope"
    assert model["model_scope_model_id"] == "deepseek-ai/DeepSeek-V4-Flash-DSpark"
    assert model["backend"] == "SGLang"
    assert model["backend_version"] == "dspark-custom"
    assert model["backend_parameters"] == list(template.backend_parameters)
    assert model["replicas"] == 1
    assert model["cluster_id"] == cluster["id"]
    instances = gpustack_live.admin.get(f"/v2/models/{model['id']}/instances")["items"]
    assert instances and all(i["backend_version"] == "dspark-custom" for i in instances)
    assert all(i["state"] != "running" for i in instances)


def test_deploy_again_reuses_the_model(gpustack_live, seeded):
    proc = run_cli("gpustack", "deploy", *_auth(gpustack_live), "--wait", "0", "--skip-preflight")
    assert proc.returncode == 0, proc.stderr
    assert "already exists" in proc.stdout
    items = gpustack_live.admin.get("/v2/models?search=deepseek-v4-flash-dspark")["items"]
    assert len([m for m in items if m["name"] == "deepseek-v4-flash-dspark"]) == 1


def test_deploy_needs_the_registered_version(gpustack_live, seeded):
    proc = run_cli("gpustack", "deploy", *_auth(gpustack_live), "--version-name", "nope-custom",
                   "--name", "other-model", "--wait", "0", "--skip-preflight")
    assert proc.returncode == 1
    assert "run `sglang-dspark gpustack register` first" in proc.stderr


UI_SHOT = REPO / "out" / "gpustack" / "ui-backends-dspark-custom.png"


def test_web_ui_lists_the_version(gpustack_live, seeded):
    """Headless Chromium (Debian's package), logged in as admin, opens Inference Backends > SGLang.

    The screenshot stays in out/gpustack/ as the test's artefact.
    """
    subprocess.run(["bash", str(INSTALL_CHROMIUM)], check=True)
    proc = subprocess.run(
        [str(GPUSTACK_VENV / "bin" / "python"), str(Path(__file__).with_name("ui_screenshot.py")),
         gpustack_live.server.url, str(gpustack_live.password_file), "Inference Backends>SGLang", "dspark-custom",
         str(UI_SHOT)],
        capture_output=True, text=True, timeout=400,
    )
    assert UI_SHOT.is_file() and UI_SHOT.stat().st_size > 10_000, proc.stderr[-2000:]
    assert proc.returncode == 0, f"page text:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    # The version list GPUStack shows for SGLang: our entry with its image, entrypoint, command.
    shown = proc.stdout[proc.stdout.index("dspark-custom"):]
    assert load_backend_file().version.image_name in shown
    assert "sglang serve" in shown
    assert "--model-path {{model_path}} --host {{worker_ip}} --port {{port}}" in shown
