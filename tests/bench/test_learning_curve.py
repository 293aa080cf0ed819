"""The learning-curve report of a training log: tokens per step, points, and the PNG."""

from __future__ import annotations

import json

from bench.learning_curve import learning_curve, main


def _log():
    return {
        "summary": {"train_sequences": 90, "heldout_sequences": 10, "answer_tokens": 15000,
                    "heldout_mean_committed": 2.1},
        "log": [
            {"step": 10, "ce": 5.0, "tau": 1.2},
            {"step": 20, "ce": 4.0, "tau": 1.5, "val_mean_committed": 1.6,
             "val_accept_per_position": [0.4, 0.2]},
            {"step": 40, "ce": 3.0, "tau": 1.9, "val_mean_committed": 2.0,
             "val_accept_per_position": [0.6, 0.3]},
        ],
    }


def test_points_are_placed_by_answer_tokens_trained():
    curve = learning_curve(_log(), batch_size=4)
    assert curve["answer_tokens_per_step"] == 600.0  # 4 sequences x 150 answer tokens
    assert [p["answer_tokens"] for p in curve["validation"]] == [12000, 24000]
    assert [p["mean_committed"] for p in curve["validation"]] == [1.6, 2.0]
    assert [p["step"] for p in curve["train"]] == [10, 20, 40]


def test_cli_writes_json_and_png(tmp_path, capsys):
    run = tmp_path / "drafter"
    run.mkdir()
    (run / "training_log.json").write_text(json.dumps(_log()))
    (run / "recipe.json").write_text(json.dumps({"name": "r", "train": {"batch_size": 4}}))
    assert main(["--log", str(run / "training_log.json"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "learning_curve.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "learning_curve.json").read_text())["validation"]
    assert "committed/block 2.000" in capsys.readouterr().out
