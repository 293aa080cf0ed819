"""Server mode: a running DSPARK SGLang server measured over HTTP.

Each prompt is sent to ``/generate`` as token ids (chat template applied
here, with the target's tokenizer). Two sources of acceptance:

* ``meta_info`` of every response: ``spec_verify_ct`` (verify steps) and
  ``completion_tokens``; SGLang's ``spec_accept_length`` is their ratio, so
  it counts the prefill token too;
* the DSPARK worker's ``dspark_accept_histogram`` (``/server_info`` ->
  ``internal_states``), read before and after the run and diffed: steps per
  number of committed tokens, which gives the per-position acceptance. It
  is server-wide, so other clients' traffic during the run leaks into it.

The headline figures come from the histogram when the server has one, else
from ``meta_info`` (mean only, no per-position acceptance).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import requests

from sglang_dspark.eval_acceptance.errors import EvalError
from sglang_dspark.eval_acceptance.prompts import EvalPrompt, encode_prompt
from sglang_dspark.eval_acceptance.summary import AcceptanceSummary

__all__ = ["evaluate_server", "read_accept_histogram", "server_model_path"]


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    try:
        resp = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise EvalError(f"cannot reach {url}: {exc}") from exc
    if resp.status_code != 200:
        raise EvalError(f"{url} answered HTTP {resp.status_code}: {resp.text[:200]}")
    try:
        return resp.json()
    except ValueError as exc:
        raise EvalError(f"{url} did not answer JSON.") from exc


def server_model_path(base_url: str, *, timeout: float = 30.0) -> str:
    """The ``model_path`` the server was started with (for its tokenizer)."""
    info = _get_json(base_url.rstrip("/") + "/model_info", timeout)
    path = info.get("model_path") or info.get("tokenizer_path")
    if not path:
        raise EvalError(f"{base_url}/model_info names no model_path; pass --target.")
    return str(path)


def read_accept_histogram(base_url: str, *, timeout: float = 30.0) -> list[int] | None:
    """The DSPARK worker's cumulative committed-tokens histogram, or ``None`` if it has none."""
    info = _get_json(base_url.rstrip("/") + "/server_info", timeout)
    for state in info.get("internal_states") or []:
        if not isinstance(state, dict):
            continue
        for record in (state.get("dspark_info_record"), state):
            hist = record.get("dspark_accept_histogram") if isinstance(record, dict) else None
            if isinstance(hist, list):
                return [int(c) for c in hist]
    return None


def _diff(after: list[int], before: list[int]) -> list[int]:
    before = before + [0] * (len(after) - len(before))
    return [a - b for a, b in zip(after, before)]


def evaluate_server(
    base_url: str,
    tokenizer: Any,
    prompts: Sequence[EvalPrompt],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
    chat_template: bool = True,
    max_prompt_tokens: int | None = None,
    concurrency: int = 1,
    timeout: float = 600.0,
    progress: bool = True,
) -> AcceptanceSummary:
    """Send every prompt to ``/generate``; acceptance from the histogram diff and ``meta_info``.

    Raises:
        EvalError: unreachable server, a failed request, or a server that
            reports no speculative verify steps at all.
    """
    from tqdm.auto import tqdm

    if concurrency < 1:
        raise EvalError(f"concurrency must be >= 1, got {concurrency}.")
    base_url = base_url.rstrip("/")
    encoded: list[tuple[int, EvalPrompt, list[int]]] = []
    skipped: list[int] = []
    for i, prompt in enumerate(prompts):
        ids = encode_prompt(tokenizer, prompt, chat_template=chat_template)
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            skipped.append(prompt.line)
        else:
            encoded.append((i, prompt, ids))

    def generate(item: tuple[int, EvalPrompt, list[int]]) -> dict[str, Any]:
        i, prompt, ids = item
        params: dict[str, Any] = {"temperature": temperature, "max_new_tokens": max_new_tokens}
        if temperature > 0:
            params["sampling_seed"] = seed + i
        try:
            resp = requests.post(
                base_url + "/generate", json={"input_ids": ids, "sampling_params": params},
                timeout=timeout,
            )
        except requests.RequestException as exc:
            raise EvalError(f"{base_url}/generate failed for line {prompt.line}: {exc}") from exc
        if resp.status_code != 200:
            raise EvalError(
                f"{base_url}/generate answered HTTP {resp.status_code} for line {prompt.line}: "
                f"{resp.text[:300]}"
            )
        meta = resp.json().get("meta_info") or {}
        return {
            "line": prompt.line,
            "prompt_tokens": len(ids),
            "new_tokens": int(meta.get("completion_tokens") or 0),
            "verify_steps": int(meta.get("spec_verify_ct") or 0),
            "spec_accept_length": meta.get("spec_accept_length"),
            "finish_reason": (meta.get("finish_reason") or {}).get("type")
            if isinstance(meta.get("finish_reason"), dict) else meta.get("finish_reason"),
        }

    before = read_accept_histogram(base_url)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        rows = list(tqdm(pool.map(generate, encoded), total=len(encoded), desc="server eval",
                         unit="prompt", disable=not progress))
    seconds = time.perf_counter() - start
    after = read_accept_histogram(base_url)

    verify_steps = sum(r["verify_steps"] for r in rows)
    new_tokens = sum(r["new_tokens"] for r in rows)
    spec_rows = [r for r in rows if r["verify_steps"]]
    meta_accept = (sum(r["new_tokens"] for r in spec_rows) / verify_steps) if verify_steps else None
    histogram: list[int] | None = None
    if before is not None and after is not None:
        histogram = _diff(after, before)
        if not sum(histogram) or any(c < 0 for c in histogram):
            histogram = None  # restarted worker or no DSPARK steps: unusable
    if histogram is None and not verify_steps:
        raise EvalError(
            f"{base_url} reported no speculative verify steps for {len(rows)} prompt(s); is it "
            "running with --speculative-algorithm DSPARK?"
        )
    if histogram is None:
        source = "meta_info (completion_tokens / spec_verify_ct)"
    else:
        source = "/server_info dspark_accept_histogram (diff)"
    extra: dict[str, Any] = {
        "source": source,
        "meta_accept_length": meta_accept,
        "meta_verify_steps": verify_steps,
        "skipped_prompts": skipped,
        "prompts": rows,
    }
    if histogram is None:
        extra["per_position_missing"] = (
            "the server exports no dspark_accept_histogram in /server_info internal_states"
        )
    return AcceptanceSummary(
        mode="server",
        histogram=tuple(histogram or ()),
        fallback_mean=meta_accept,
        num_prompts=len(rows),
        num_tokens=new_tokens,
        seconds=seconds,
        settings={
            "server": base_url,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "seed": seed,
            "chat_template": chat_template,
            "concurrency": concurrency,
        },
        extra=extra,
    )
