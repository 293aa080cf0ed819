"""``python -m bench.server_start``: medians, ratio and report, with the server starts stubbed."""

from __future__ import annotations

import json

import pytest

from bench import server_start


def test_report_holds_medians_and_ratio(monkeypatch, tmp_path, capsys):
    fake = {"tp1": iter([20.0, 22.0, 21.0]), "tp2": iter([40.0, 50.0, 30.0])}
    calls = []

    def time_start(target, layout, log):
        calls.append(layout)
        return next(fake[layout])

    monkeypatch.setattr(server_start, "time_start", time_start)
    assert server_start.main(["--repeats", "3", "--out", str(tmp_path)]) == 0
    assert calls == ["tp1", "tp2"] * 3  # alternating, so drift hits both layouts
    report = json.loads((tmp_path / "server_start.json").read_text())
    assert report["median_seconds"] == {"tp1": 21.0, "tp2": 40.0}
    assert report["tp2_over_tp1"] == pytest.approx(40.0 / 21.0)
    assert "two-rank / one-rank start: 1.90x" in capsys.readouterr().out


def test_repeats_must_be_positive(tmp_path):
    with pytest.raises(SystemExit):
        server_start.main(["--repeats", "0", "--out", str(tmp_path)])
