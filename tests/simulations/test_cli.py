"""The `fedrec` command line: one entry point dispatching to the `python -m` mains."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from simulations import cli

ROOT = Path(__file__).resolve().parents[2]


def test_bare_and_help_list_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)
    assert cli.main([]) == cli.EXIT_BAD_INPUT


def test_an_unknown_command_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trian"]) == cli.EXIT_BAD_INPUT
    assert "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_each_command_has_help_from_its_module(command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.cli", command, "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"python -m {cli.COMMANDS[command][0]}" in proc.stdout


def test_bad_input_goes_through_the_shared_error_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--out", "/tmp/x", "--seeds", "0"]) == cli.EXIT_BAD_INPUT
    assert "error: --seeds must be >= 1, got 0" in capsys.readouterr().err
