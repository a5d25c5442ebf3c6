"""common.run_result: the one results.json loader validates and names the file and key."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from common.io import write_json_atomic
from common.privacy.report import PrivacyReport
from common.run_result import RunResult, RunResultError, load_run


def _results(**over: Any) -> dict[str, Any]:
    return {
        "setting": "federated",
        "status": "completed",
        "metrics": {"hr@10": 0.2},
        "privacy": {
            "unit": "user",
            "mode": "none",
            "trust_model": "no formal privacy",
            "epsilon": math.inf,
            "target_epsilon": math.inf,
            "delta": None,
            "accountant": None,
            "declines": [],
        },  # fmt: skip
        "history": [{"round": 0, "clients": []}, {"round": 1, "eval": {"hr@10": 0.2}}],
        "config": {"fed.rounds": 1},
        **over,
    }


def test_a_written_results_file_reads_back_typed(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "results.json", _results())  # infinities become "inf"
    run = load_run(tmp_path / "results.json")
    assert run.completed and run.setting == "federated"
    assert run.privacy.epsilon == math.inf and not run.privacy.is_dp
    assert run.privacy.details == {"declines": []}
    assert [h["round"] for h in run.evaluated_rounds()] == [1]
    assert run.last_eval() == {"hr@10": 0.2} and run.run_config() == {"fed.rounds": 1}


def test_a_central_run_without_status_counts_as_completed() -> None:
    data = _results()
    del data["status"]
    assert RunResult.from_json(data, "central/results.json").completed


@pytest.mark.parametrize("drop", ["metrics", "privacy", "history"])
def test_a_missing_section_names_the_file_and_key(tmp_path: Path, drop: str) -> None:
    data = _results()
    del data[drop]
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(RunResultError, match=rf"results.json: missing key.*'{drop}'"):
        load_run(tmp_path / "results.json")


def test_a_privacy_section_without_epsilon_names_it(tmp_path: Path) -> None:
    data = _results()
    del data["privacy"]["epsilon"]
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(RunResultError, match=r"results.json: `privacy`: missing key `epsilon`"):
        load_run(tmp_path / "results.json")


def test_a_bad_or_absent_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RunResultError, match="no such results file"):
        load_run(tmp_path / "results.json")
    (tmp_path / "results.json").write_text("{")
    with pytest.raises(RunResultError, match="results.json: not JSON"):
        load_run(tmp_path / "results.json")
    (tmp_path / "results.json").write_text(json.dumps(_results(history=[{"eval": {}}])))
    with pytest.raises(RunResultError, match="`history`"):
        load_run(tmp_path / "results.json")
    with pytest.raises(RunResultError, match="missing key `config`"):
        RunResult.from_json(_results(config={}), "x.json").run_config()


def test_the_privacy_report_keeps_every_figure() -> None:
    section = {**_results()["privacy"], "per_client_epsilon": {"0": 1.0}}
    report = PrivacyReport.from_json(section, "x")
    assert report.to_json() == section
