"""Bad input: the config parser fuzzed, and malformed data files through the commands.

The loaders themselves are fuzzed by tests/common/test_data_fuzz.py (random bytes, mutated
and random rows); here the same kind of files go through the command a user runs.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config.base import ConfigError
from common.config.parse import parse_config, parse_overrides
from simulations import centralized

from .procs import ROOT, federated_command

FUZZ = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
KNOWN = sorted(parse_config({}).flat())

VALUE = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["inf", "+inf", "-inf", "nan", "true", "False", "", "local", "krum"]),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)
KEY = st.one_of(st.sampled_from(KNOWN), st.text(max_size=16))


def _parses_or_names_a_key(overrides: dict[str, Any]) -> None:
    try:
        cfg = parse_config(overrides)
    except ConfigError as exc:
        assert any(k in str(exc) or repr(k) in str(exc) for k in overrides), (overrides, str(exc))
        return
    flat = cfg.flat()
    # What parsed is what a later stage relies on: no NaN slipped through.
    nan = [k for k, v in flat.items() if isinstance(v, float) and math.isnan(v)]
    assert not nan, f"NaN accepted for {nan} from {overrides}"


@FUZZ
@given(key=st.sampled_from(KNOWN), value=VALUE)
def test_one_known_key_with_any_value_parses_or_is_a_config_error(key: str, value: Any) -> None:
    _parses_or_names_a_key({key: value})


@FUZZ
@given(overrides=st.dictionaries(KEY, VALUE, max_size=5))
def test_random_keys_and_values_parse_or_are_a_config_error(overrides: dict[str, Any]) -> None:
    _parses_or_names_a_key(overrides)


@FUZZ
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_command_line_overrides_parse_or_are_a_config_error(text: str) -> None:
    try:
        overrides = parse_overrides(text)
    except ConfigError:
        return
    _parses_or_names_a_key(overrides)


# ---------------------------------------------------------------- malformed files, via the CLI

MOVIES = (
    "movieId,title,genres\n1,Toy Story (1995),Comedy\n2,Heat (1995),Action\n3,Up (2009),Drama\n"
)
RATINGS = "userId,movieId,rating,timestamp\n" + "".join(
    f"{u},{m},4.0,{10 * u + m}\n" for u in (1, 2) for m in (1, 2, 3)
)


def _replace_line(text: str, number: int, line: str) -> str:
    lines = text.split("\n")
    lines[number - 1] = line
    return "\n".join(lines)


# case id -> (files to write over the good ones (None = delete), words the error must have)
CASES: dict[str, tuple[dict[str, bytes | None], str]] = {
    "rating-nan": (
        {"ratings.csv": _replace_line(RATINGS, 3, "1,2,nan,12").encode()},
        "ratings.csv line 3: rating 'nan' is not a finite number",
    ),
    "huge-id": (
        {"ratings.csv": _replace_line(RATINGS, 4, "1," + "9" * 40 + ",4.0,13").encode()},
        "ratings.csv line 4: movieId",
    ),
    "too-few-fields": (
        {"ratings.csv": _replace_line(RATINGS, 5, "2,1,4.0").encode()},
        "ratings.csv line 5: expected 4 fields, got 3",
    ),
    "unknown-movie": (
        {"ratings.csv": _replace_line(RATINGS, 6, "2,99,4.0,22").encode()},
        "ratings.csv line 6: item id 99 is not in movies.csv",
    ),
    "empty-ratings": ({"ratings.csv": b""}, "ratings.csv line 1: header"),
    "header-only": ({"ratings.csv": RATINGS.split("\n")[0].encode() + b"\n"}, "ratings.csv line 2"),
    "movies-latin-1": (
        {"movies.csv": _replace_line(MOVIES, 3, "2,Amélie (2001),Comedy").encode("latin-1")},
        "movies.csv line 3: bytes are not valid utf-8",
    ),
    "duplicate-movie": (
        {"movies.csv": _replace_line(MOVIES, 4, "1,Again (1995),Drama").encode()},
        "movies.csv line 4: item id 1 already defined on line 2",
    ),
    "huge-title": (
        {"movies.csv": _replace_line(MOVIES, 3, "2," + "x" * 200_000 + ",Action").encode()},
        "movies.csv line 3",
    ),
    "open-quote": (
        {"movies.csv": _replace_line(MOVIES, 2, '1,"Toy Story (1995),Comedy').encode()},
        "movies.csv line 2",
    ),
    "missing-movies": ({"movies.csv": None}, "movies.csv: file not found"),
}
SUBPROCESS = {"rating-nan", "movies-latin-1"}  # also run as a real process (exit code, stderr)


def _data_dir(tmp_path: Path, files: dict[str, bytes | None]) -> Path:
    data = tmp_path / "ml"
    data.mkdir()
    (data / "movies.csv").write_text(MOVIES)
    (data / "ratings.csv").write_text(RATINGS)
    for name, content in files.items():
        if content is None:
            (data / name).unlink()
        else:
            (data / name).write_bytes(content)
    return data


def _check_one_clear_line(code: int, stderr: str, expected: str, out: Path) -> None:
    assert code == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_file_gives_one_clear_line_and_no_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    files, expected = CASES[case]
    data, out = _data_dir(tmp_path, files), tmp_path / "out"
    argv = ["--dataset", "ml-latest-small", "--data-dir", str(data), "--epsilon", "inf"]
    argv += ["--out", str(out)]
    if case in SUBPROCESS:
        proc = subprocess.run(
            [sys.executable, "-m", "simulations.centralized", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        _check_one_clear_line(proc.returncode, proc.stderr, expected, out)
    else:
        code = centralized.main(argv)
        _check_one_clear_line(code, capsys.readouterr().err, expected, out)


def test_ml_1m_ratings_with_a_missing_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "ml-1m"
    data.mkdir()
    (data / "movies.dat").write_text("1::Toy Story (1995)::Comedy\n2::Heat (1995)::Action\n")
    (data / "users.dat").write_text("1::F::1::10::48067\n")
    (data / "ratings.dat").write_text("1::1::5::978300760\n1::2::3\n1::2::3::978300762\n")
    out = tmp_path / "out"
    code = centralized.main(
        ["--dataset", "ml-1m", "--data-dir", str(data), "--epsilon", "inf", "--out", str(out)]
    )
    _check_one_clear_line(code, capsys.readouterr().err, "ratings.dat line 2: expected 4", out)


def test_the_federated_command_names_the_bad_file_before_starting_flower(
    tmp_path: Path, tiny_backbone: Path
) -> None:
    files, expected = CASES["rating-nan"]
    data, out = _data_dir(tmp_path, files), tmp_path / "out"
    over = (
        f'data.dataset="ml-latest-small" data.dir="{data}" model.backbone="{tiny_backbone}" '
        'fed.rounds=1 data.num-sites=2 dp.mode="none"'
    )
    cmd, env = federated_command(["--out", str(out), "--run-config", over])
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    _check_one_clear_line(proc.returncode, proc.stderr, expected, out)
