"""The shipped backend file, and the register merge without a server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sglang_dspark.gpustack.backend_file import default_backend_file, load_backend_file
from sglang_dspark.gpustack.client import Credentials
from sglang_dspark.gpustack.register import merged_backend

REPO = Path(__file__).resolve().parents[2]

# The seed deployment's backend parameters (8x H20-141G), verbatim.
SEED_PARAMETERS = (
    "--context-length 1000000",
    "--trust-remote-code",
    "--tp-size 8",
    "--ep-size 8",
    "--moe-runner-backend flashinfer_mxfp4",
    "--speculative-moe-runner-backend flashinfer_mxfp4",
    "--speculative-algorithm DSPARK",
    "--speculative-eagle-topk 1",
    "--speculative-num-steps 1",
    "--mem-fraction-static 0.85",
    "--cuda-graph-max-bs 32",
    "--max-running-requests 32",
    "--disable-overlap-schedule",
)


def test_packaged_file_is_the_repository_file():
    assert default_backend_file().read_bytes() == (REPO / "gpustack" / "dspark-backend.yaml").read_bytes()


def test_version_matches_the_seed_deployment():
    v = load_backend_file().version
    assert (v.backend_name, v.name) == ("SGLang", "dspark-custom")
    assert v.entrypoint == "sglang serve"
    assert v.run_command == "--model-path {{model_path}} --host {{worker_ip}} --port {{port}}"
    assert v.custom_framework == "cuda"
    assert v.image_name.startswith("sglang-dspark:")


def test_model_template_carries_the_seed_parameters():
    m = load_backend_file().model
    assert m.source == "model_scope"
    assert m.model_scope_model_id == "deepseek-ai/DeepSeek-V4-Flash-DSpark"
    assert (m.backend, m.backend_version) == ("SGLang", "dspark-custom")
    # One flag renamed: SGLang 0.5.23 refuses the seed's --cuda-graph-max-bs as ambiguous.
    expected = tuple(p.replace("--cuda-graph-max-bs ", "--cuda-graph-max-bs-decode ") for p in SEED_PARAMETERS)
    assert m.backend_parameters == expected
    # The image ships distro, so the seed's start-up pip install is not needed.
    assert "PYPI_PACKAGES_INSTALL" not in m.env


def _parse_like_sglang_serve(argv: list[str]) -> str:
    """SGLang 0.5.23's own ``sglang serve`` argument parser; returns what it printed on an error."""
    import argparse
    import contextlib
    import io

    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog="sglang serve")
    ServerArgs.add_cli_args(parser)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parser.parse_args(argv)
        except SystemExit:
            return err.getvalue() or "exit"
    return ""


def _command_line(run_command: str, parameters) -> list[str]:
    placeholders = {"{{model_path}}": "/models/m", "{{worker_ip}}": "127.0.0.1", "{{port}}": "30000"}
    for key, value in placeholders.items():
        run_command = run_command.replace(key, value)
    return run_command.split() + [word for p in parameters for word in p.split()]


def test_shipped_command_line_parses_with_sglang_0_5_23():
    f = load_backend_file()
    assert _parse_like_sglang_serve(_command_line(f.version.run_command, f.model.backend_parameters)) == ""
    # The seed's parameters, verbatim, do not: this is why the template renames one flag.
    assert "ambiguous option: --cuda-graph-max-bs" in _parse_like_sglang_serve(
        _command_line(f.version.run_command, SEED_PARAMETERS)
    )


def test_version_name_needs_custom_suffix(tmp_path):
    text = (REPO / "gpustack" / "dspark-backend.yaml").read_text().replace("dspark-custom:", "dspark:")
    (tmp_path / "b.yaml").write_text(text)
    with pytest.raises(ValueError, match="-custom"):
        load_backend_file(tmp_path / "b.yaml")


def test_merge_changes_only_the_version():
    backend = {
        "id": 2, "created_at": "t0", "updated_at": "t1", "backend_name": "SGLang",
        "description": "kept", "default_env": {"A": "1"}, "is_built_in": True,
        "version_configs": {"other-custom": {"image_name": "x:1", "custom_framework": "cpu"}},
    }
    version = load_backend_file().version
    body, action = merged_backend(backend, version)
    assert action == "added"
    assert body["version_configs"]["other-custom"] == backend["version_configs"]["other-custom"]
    assert body["version_configs"]["dspark-custom"] == version.version_config()
    assert {k: v for k, v in body.items() if k != "version_configs"} == {
        k: v for k, v in backend.items() if k not in ("id", "created_at", "updated_at", "version_configs")
    }
    stored = {**backend, "version_configs": body["version_configs"]}
    assert merged_backend(stored, version)[1] == "unchanged"
    assert merged_backend(stored, replace(version, image_name="y:2"))[1] == "updated"


def test_credentials_never_show_secrets():
    c = Credentials(username="admin", password="hunter2-secret")
    k = Credentials(api_key="gpustack_abc_secretvalue")
    assert "hunter2" not in repr(c) and "secretvalue" not in repr(k)
    with pytest.raises(ValueError):
        Credentials(api_key="k", username="u", password="p")
