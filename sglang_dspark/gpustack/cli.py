"""``sglang-dspark gpustack register|deploy``: argument parsing and exit codes.

Exit status: 0 done; 1 GPUStack, input or preflight error (message on stderr;
``deploy`` creates nothing when its preflight fails);
2 usage error; 3 ``deploy`` stopped waiting before an instance ran.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sglang_dspark.gpustack.backend_file import load_backend_file
from sglang_dspark.gpustack.client import Credentials, GPUStackClient, GPUStackError, ServerConfig

API_KEY_ENV = "GPUSTACK_API_KEY"


def add_parser(groups: argparse._SubParsersAction) -> None:
    """Attach ``gpustack`` and its sub-commands to the top-level parser."""
    gp = groups.add_parser("gpustack", help="register the DSPARK backend version and deploy on GPUStack")
    sub = gp.add_subparsers(dest="command", required=True)

    reg = sub.add_parser("register", help="add/update the dspark-custom version of GPUStack's SGLang backend")
    _server_args(reg)
    reg.add_argument("--image", help="container image for the version (default: the backend file's)")
    reg.add_argument("--version-name", help="version name, must end in -custom (default: dspark-custom)")
    reg.set_defaults(run=run_register)

    dep = sub.add_parser("deploy", help="create the DeepSeek-V4-Flash-DSpark model and wait for its instance")
    _server_args(dep)
    dep.add_argument("--name", help="model name (default: the template's)")
    dep.add_argument("--cluster-id", type=int, help="cluster to deploy in (default: the default cluster)")
    dep.add_argument("--version-name", help="backend version the model names (default: the template's)")
    dep.add_argument("--wait", type=float, default=1800.0, metavar="SECONDS",
                     help="how long to wait for a running instance; 0 returns at once (default 1800)")
    dep.add_argument("--poll", type=float, default=5.0, metavar="SECONDS", help=argparse.SUPPRESS)
    pre = dep.add_argument_group("preflight (before anything is created)")
    pre.add_argument("--gpu", help="GPU kind of the workers (default: the backend file's preflight.gpu)")
    pre.add_argument("--gpus", type=int, help="GPUs per worker (default: the backend file's preflight.gpus)")
    pre.add_argument("--model-dir", type=Path,
                     help="local copy of the model's config.json and index (default: fetched from ModelScope)")
    pre.add_argument("--skip-preflight", action="store_true", help="create the model without checking its command")
    dep.set_defaults(run=run_deploy)


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, help="GPUStack server URL, e.g. https://gpustack.example")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--api-key", help=f"GPUStack API key (or set {API_KEY_ENV})")
    auth.add_argument("--username", help="GPUStack user (an administrator), with --password-file")
    p.add_argument("--password-file", type=Path, help="file whose first line is the password")
    p.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate")
    p.add_argument("--backend-file", type=Path, help="backend YAML (default: the packaged dspark-backend.yaml)")


def _client(args: argparse.Namespace) -> GPUStackClient:
    if args.username:
        if not args.password_file:
            raise ValueError("--username needs --password-file")
        try:
            lines = args.password_file.read_text().splitlines()
        except OSError as e:
            raise ValueError(f"--password-file {args.password_file}: {e.strerror}") from None
        if not lines or not lines[0]:
            raise ValueError(f"--password-file {args.password_file} is empty")
        creds = Credentials(username=args.username, password=lines[0])
    else:
        key = args.api_key or os.environ.get(API_KEY_ENV)
        if not key:
            raise ValueError(f"give --api-key (or {API_KEY_ENV}), or --username with --password-file")
        creds = Credentials(api_key=key)
    return GPUStackClient(ServerConfig(url=args.server, credentials=creds, insecure=args.insecure))


def _log(line: str) -> None:
    print(line, flush=True)


def run_register(args: argparse.Namespace) -> int:
    """``gpustack register``."""
    from dataclasses import replace

    from sglang_dspark.gpustack.register import register_version

    try:
        version = load_backend_file(args.backend_file).version
        if args.image:
            version = replace(version, image_name=args.image)
        if args.version_name:
            version = replace(version, name=args.version_name)
        register_version(_client(args), version, log=_log)
    except (GPUStackError, ValueError) as e:
        print(f"sglang-dspark gpustack register: {e}", file=sys.stderr)
        return 1
    return 0


def run_deploy(args: argparse.Namespace) -> int:
    """``gpustack deploy``."""
    from dataclasses import replace

    from sglang_dspark.gpustack.deploy import deploy_model

    try:
        backend_file = load_backend_file(args.backend_file)
        template = backend_file.model
        if args.version_name:
            template = replace(template, backend_version=args.version_name)
        if not args.skip_preflight and not _preflight(args, backend_file, template):
            print("sglang-dspark gpustack deploy: preflight failed; nothing was created "
                  "(fix the backend parameters, or --skip-preflight)", file=sys.stderr)
            return 1
        result = deploy_model(
            _client(args), template, cluster_id=args.cluster_id, name=args.name,
            wait_s=args.wait, poll_s=args.poll, log=_log,
        )
    except (GPUStackError, ValueError, RuntimeError) as e:
        print(f"sglang-dspark gpustack deploy: {e}", file=sys.stderr)
        return 1
    return {"running": 0, "not-waited": 0, "failed": 1, "timeout": 3}[result.outcome]


def _preflight(args: argparse.Namespace, backend_file, template) -> bool:
    """``sglang-dspark preflight`` of the command the workers will run; prints the plan; True when it serves."""
    import tempfile

    from sglang_dspark.gpustack.deploy_preflight import fetch_model_configs, preflight_template
    from sglang_dspark.sglang.preflight import print_report

    gpu = args.gpu or backend_file.preflight.gpu
    gpus = args.gpus or backend_file.preflight.gpus
    with tempfile.TemporaryDirectory(prefix="dspark-preflight-") as tmp:
        if args.model_dir:
            model_dir = args.model_dir
        else:
            _log(f"fetching {template.model_scope_model_id}'s config files from ModelScope (no weights)")
            model_dir = fetch_model_configs(template.model_scope_model_id, Path(tmp) / "model")
        _log(f"preflight of {template.name} on {gpus}x {gpu}:")
        report = preflight_template(backend_file.version, template, model_dir, gpu=gpu, gpus=gpus)
        print_report(report)
    return report.ok
