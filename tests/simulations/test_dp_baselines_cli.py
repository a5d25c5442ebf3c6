"""`python -m simulations.dp_baselines`: a tiny synthetic measurement and clear bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations import dp_baselines

TINY = "data.synthetic-users=40 data.synthetic-items=60"


def test_tiny_measurement_writes_rows_and_summary(tmp_path: Path) -> None:
    argv = ["--dataset", "synthetic", "--epsilon", "4", "--seeds", "2", "--reproducible-noise"]
    rc = dp_baselines.main([*argv, "--out", str(tmp_path), "--run-config", TINY])
    assert rc == 0
    rows = json.loads((tmp_path / "dp_baselines.json").read_text())["rows"]
    assert [(r["epsilon"], r["seed"]) for r in rows] == [(4.0, 0), (4.0, 1)]
    for r in rows:
        for b in r["baselines"].values():
            assert b["privacy"]["epsilon"] <= 4.0 and b["privacy"]["reproducible_noise"]
    table = (tmp_path / "summary.md").read_text()
    assert "| dp-ease | 4 | 1e-05 |" in table and "| dp-popularity | 4 | 1e-05 |" in table


@pytest.mark.parametrize("bad", [["--epsilon", "0"], ["--epsilon", "inf"], ["--seeds", "0"]])
def test_bad_input_is_one_clear_error(
    bad: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dp_baselines.main(["--dataset", "synthetic", *bad, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: --seeds must be >= 1")
