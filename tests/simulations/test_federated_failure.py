"""A failed `flwr run` says why in its own error: the log's last lines travel with it.

CI keeps only the test's output, not the run folder, so a failure that points at a log file
alone cannot be diagnosed there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations import federated


def test_a_failed_run_raises_with_the_tail_of_its_log(tmp_path: Path) -> None:
    log = tmp_path / "flwr.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "ValueError: the real cause\n")
    with pytest.raises(RuntimeError) as err:
        federated._finished(
            tmp_path, 0, {"status": "finished:failed", "status-details": "run expired"}, log, 1.0
        )
    msg = str(err.value)
    assert "finished:failed" in msg and str(log) in msg and "Flower says: run expired" in msg
    assert "ValueError: the real cause" in msg and "line 99" in msg
    assert "line 50" not in msg  # the tail, not the whole log


def test_a_missing_log_is_said_not_hidden(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no log"):
        federated._finished(tmp_path, 1, None, tmp_path / "absent.log", 1.0)
