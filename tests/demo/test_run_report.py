from sglang_dspark.demo.run import format_table, plot_demo


def _report():
    row = dict(output_throughput=10.0, median_ttft_ms=100.0, median_itl_ms=100.0, p95_itl_ms=120.0,
               accept_length=None)
    spec = dict(row, output_throughput=25.0, median_itl_ms=40.0, accept_length=3.2)
    return {
        "models": {"label": "test"},
        "results": {"no speculation": row, "DSPARK": spec},
        "speedup": 2.5,
    }


def test_table_shows_each_run_and_the_speedup():
    table = format_table(_report())
    assert "| no speculation | 10.00 |" in table
    assert "| DSPARK | 25.00 |" in table
    assert "3.20 |" in table and "1.00 |" in table  # plain decoding: one token per step
    assert "2.50x" in table


def test_plot_is_written(tmp_path):
    path = tmp_path / "demo.png"
    plot_demo(_report(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
