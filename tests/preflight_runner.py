"""Run ``preflight`` for several cases in one fresh process (one SGLang import), as the CLI would."""

from __future__ import annotations

import json
import subprocess
import sys

_DRIVER = """
import json, os, sys
from sglang_dspark.sglang.preflight import preflight
out = {}
for name, case in json.loads(sys.stdin.read()).items():
    saved = {k: os.environ.get(k) for k in case["env"]}
    os.environ.update(case["env"])
    report = preflight(case["argv"], gpu=case["gpu"], gpus=case["gpus"])
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    out[name] = {"ok": report.ok, "plan": list(report.plan), "errors": list(report.errors)}
print(json.dumps(out))
"""


def preflight_cases(cases: dict[str, dict], *, env: dict[str, str] | None = None) -> dict[str, dict]:
    """name -> {"argv", "gpu", "gpus", "env"} in; name -> {"ok", "plan", "errors"} out."""
    import os

    payload = {name: {"gpu": None, "gpus": None, "env": {}, **case} for name, case in cases.items()}
    proc = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps(payload), capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
