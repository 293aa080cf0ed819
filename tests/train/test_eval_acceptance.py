"""``python -m sglang_dspark.eval_acceptance``: offline and server modes on the tiny target."""

from __future__ import annotations

import json

import pytest

from sglang_dspark.copy_drafter import copy_drafter_config, write_copy_drafter
from sglang_dspark.eval_acceptance import (
    AcceptanceSummary,
    EvalPrompt,
    PromptFileError,
    encode_prompt,
    histogram_from_counts,
    load_eval_prompts,
)
from sglang_dspark.eval_acceptance.__main__ import main

from .conftest import REPO

CHAT = REPO / "tests" / "data" / "eval_chat.jsonl"


def _check_consistent(report: dict) -> None:
    hist = report["accept_histogram"]
    assert sum(hist) == report["num_steps"] > 0
    assert report["mean_accept_length"] == pytest.approx(
        sum(n * c for n, c in enumerate(hist)) / sum(hist), abs=1e-9
    )
    assert report["mean_accept_length"] == pytest.approx(
        1.0 + sum(report["per_position_acceptance"]), abs=1e-9
    )
    rates = report["per_position_acceptance"]
    assert all(0.0 <= b <= a <= 1.0 for a, b in zip([1.0, *rates], rates))


def test_offline_cli_writes_consistent_json_and_plot(tiny_target_dir, copy_drafter, tmp_path, capsys):
    out = tmp_path / "eval" / "offline.json"
    rc = main(["--offline", "--target", str(tiny_target_dir), "--drafter", str(copy_drafter),
               "--prompts", str(CHAT), "--max-prompts", "3", "--max-new-tokens", "32",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "mean accepted length" in printed and "P(accepted)" in printed
    report = json.loads(out.read_text())
    _check_consistent(report)
    assert report["mode"] == "offline" and report["num_prompts"] == 3
    assert report["mean_accept_length"] > 1.0  # the copy drafter gets some drafts accepted
    assert len(report["per_position_acceptance"]) == 4  # the copy drafter's block size
    rows = report["prompts"]
    assert [r["line"] for r in rows] == [1, 2, 3]
    assert sum(r["verify_steps"] for r in rows) == report["num_steps"]
    assert sum(r["new_tokens"] for r in rows) == report["num_tokens"]
    assert all(r["new_tokens"] <= 32 for r in rows)
    assert out.with_suffix(".png").stat().st_size > 1000


def test_offline_sampling_mode_is_consistent(tiny_target_dir, copy_drafter, tmp_path):
    out = tmp_path / "sampled.json"
    argv = ["--offline", "--target", str(tiny_target_dir), "--drafter", str(copy_drafter),
            "--prompts", str(CHAT), "--max-prompts", "2", "--max-new-tokens", "24",
            "--temperature", "0.7", "--seed", "3", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    first = json.loads(out.read_text())
    _check_consistent(first)
    assert first["settings"]["temperature"] == 0.7
    assert main(argv) == 0  # seeded: the same numbers again
    assert json.loads(out.read_text())["accept_histogram"] == first["accept_histogram"]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "ok"', "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"text": "no prompt key"}', "string 'prompt' or a 'conversations' list"),
        ('{"prompt": 3}', "string 'prompt' or a 'conversations' list"),
        ('{"conversations": []}', "non-empty list"),
        ('{"conversations": [{"from": "alien", "value": "x"}]}', "turn 0 needs"),
        ('{"conversations": [{"from": "gpt", "value": "only a reply"}]}', "no user turn"),
    ],
)
def test_malformed_line_names_its_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n\n' + line + "\n")
    with pytest.raises(PromptFileError, match=rf"bad\.jsonl:3: .*{message}"):
        load_eval_prompts(path)


def test_cli_reports_file_errors(tmp_path, capsys):
    assert main(["--offline", "--prompts", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("\n")
    assert main(["--offline", "--prompts", str(tmp_path / "empty.jsonl")]) == 2
    assert "holds no prompts" in capsys.readouterr().err


def test_drafter_that_does_not_fit_the_target(tiny_target_dir, tmp_path, capsys):
    wrong = write_copy_drafter(tmp_path / "wrong",
                               copy_drafter_config(tiny_target_dir, hidden_size=32))
    rc = main(["--offline", "--target", str(tiny_target_dir), "--drafter", str(wrong),
               "--prompts", str(CHAT), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "does not fit target" in err and "hidden" in err


def test_sharegpt_conversation_uses_the_chat_template(tiny_target_dir, tmp_path):
    from transformers import AutoTokenizer

    path = tmp_path / "conv.jsonl"
    turns = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
             {"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Name a colour."},
             {"from": "gpt", "value": "Blue."}]
    path.write_text(json.dumps({"conversations": turns}) + "\n" + json.dumps({"prompt": "Hi"}) + "\n")
    conv, plain = load_eval_prompts(path)
    assert conv.messages[-1] == ("user", "Name a colour.") and len(conv.messages) == 4
    tok = AutoTokenizer.from_pretrained(str(tiny_target_dir))
    want = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a colour."}],
        add_generation_prompt=True, tokenize=True,
    )
    want = want["input_ids"] if hasattr(want, "keys") else want
    assert encode_prompt(tok, conv) == list(want)
    raw = encode_prompt(tok, plain, chat_template=False)
    assert raw == tok("Hi", add_special_tokens=False)["input_ids"]
    assert len(encode_prompt(tok, plain)) > len(raw)


def test_summary_from_counts():
    # 10 steps; draft 1 accepted in 6, drafts 1-2 in 3, all three in 1.
    hist = histogram_from_counts(10, [6, 3, 1])
    assert hist == [0, 4, 3, 2, 1]
    s = AcceptanceSummary("offline", tuple(hist), num_prompts=1, num_tokens=20, seconds=0.0)
    assert s.mean_accept_length == pytest.approx(2.0)
    assert s.per_position == pytest.approx([0.6, 0.3, 0.1])
    assert s.per_position_conditional == pytest.approx([0.6, 0.5, 1 / 3])
    with pytest.raises(ValueError):
        histogram_from_counts(10, [3, 6])
    with pytest.raises(ValueError):
        AcceptanceSummary("offline", (1, 2), num_prompts=1, num_tokens=1, seconds=0.0)
    with pytest.raises(ValueError):
        EvalPrompt(1, (("user", "x"), ("assistant", "y")))


def test_server_mode_against_a_real_dspark_server(servers, tmp_path):
    """The session's DSPARK server (tiny target, copy drafter, every step drafts)."""
    _, server = servers
    out = tmp_path / "server.json"
    rc = main(["--server", server.url, "--prompts", str(CHAT), "--max-prompts", "3",
               "--max-new-tokens", "32", "--out", str(out), "--no-progress"])
    assert rc == 0, server.log_tail()
    report = json.loads(out.read_text())
    assert report["mode"] == "server"
    assert report["source"].startswith("/server_info dspark_accept_histogram")
    _check_consistent(report)
    # One client: the worker's histogram counts exactly the requests' verify steps.
    assert report["num_steps"] == report["meta_verify_steps"]
    assert report["num_tokens"] == sum(r["new_tokens"] for r in report["prompts"])
    assert out.with_suffix(".png").is_file()
