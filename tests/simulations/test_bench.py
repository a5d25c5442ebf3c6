"""simulations.bench on the tiny configuration: it runs end to end and writes what it promises.

No timing is asserted (CI machines are shared and noisy); the figures live in BENCHMARKS.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations import bench


@pytest.mark.slow
def test_tiny_benchmark_writes_every_section(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--tiny", "--steps", "1", "--site-users", "20",
            "--federated", "4,8"]  # fmt: skip
    assert bench.main(argv) == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    assert [v["variant"] for v in res["variants"]] == list(bench.VARIANTS)
    for v in res["variants"]:
        assert v["users_per_s"] > 0 and v["step_flops"] > 0 and v["efficiency"] > 0
        assert v["backbone_over_up"] > 1  # the upload is a fraction of the backbone
    assert all(r is not None and r > 0 for r in res["ratios"].values())
    assert res["evaluation"]["users"] > 0 and res["evaluation"]["full_catalogue_s"] > 0
    site = res["site_round"]
    assert site["users"] == 20 and site["steps"] >= 1 and site["round_s"] > 0
    fed = res["federated"]
    assert [r["clients"] for r in fed] == [4, 8]
    for r in fed:
        assert r["status"] == "completed", r
        assert r["peak_rss_mb"] > 0 and len(r["time_per_round_s"]) == 2
    assert res["federated_peak_rss_ratio"] > 0


def test_bad_arguments_are_named() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--out", "/tmp/x", "--federated", "10,a"])
    with pytest.raises(SystemExit):
        bench.main(["--out", "/tmp/x", "--only", "no-such-variant"])
