"""Interaction data: MovieLens loaders and the data-set registry (types: common.interactions)."""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.download import resolve_data_dir
from common.interactions import DataError, Interactions, item_text
from common.synthetic import generate

ML_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_NO_GENRES = "(no genres listed)"
_INT = re.compile(r"[+-]?[0-9]{1,19}")
_Rows = list[tuple[int, list[str]]]  # (1-based line, fields)
_DataDir = str | os.PathLike[str] | None


# ---------------------------------------------------------------- reading and parsing


def _read_text(path: Path, encoding: str) -> str:
    if not path.is_file():
        raise DataError(f"{path.name}: file not found at {path}")
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path.name} line {line}: bytes are not valid {encoding} ({err.reason})"
        ) from None


def _csv_rows(path: Path, columns: tuple[str, ...]) -> _Rows:
    """Read a UTF-8 CSV file with a header; return its rows re-ordered to ``columns``."""
    text = _read_text(path, "utf-8-sig")
    reader = csv.reader((line + "\n" for line in text.split("\n")), strict=True)
    rows: _Rows = []
    start = 1  # first line of the record being read (a quoted field may span lines)
    try:
        header = next(reader)
        if missing := [c for c in columns if c not in header]:
            raise DataError(f"{path.name} line 1: header {header} lacks column(s) {missing}")
        pos, start = [header.index(c) for c in columns], reader.line_num + 1
        for fields in reader:
            if fields and len(fields) != len(header):
                n, got = len(header), len(fields)
                raise DataError(f"{path.name} line {start}: expected {n} fields, got {got}")
            if fields:
                rows.append((start, [fields[i] for i in pos]))
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"{path.name} line {start}: {err}") from None
    if not rows:
        raise DataError(f"{path.name} line 2: file has no data rows")
    return rows


def _delimited_rows(path: Path, encoding: str, sep: str, n_fields: int) -> _Rows:
    """Read a header-less file of ``sep``-separated fields; blank lines are skipped."""
    rows: _Rows = []
    for number, line in enumerate(_read_text(path, encoding).split("\n"), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split(sep)
        if len(fields) != n_fields:
            raise DataError(
                f"{path.name} line {number}: expected {n_fields} fields, got {len(fields)}"
            )
        rows.append((number, fields))
    if not rows:
        raise DataError(f"{path.name} line 1: file has no data rows")
    return rows


def _int(text: str, where: str, name: str) -> int:
    digits = text.strip(" \t\r\n")
    if not _INT.fullmatch(digits) or not -(2**63) <= int(digits) < 2**63:
        raise DataError(f"{where}: {name} {text!r} is not an integer")
    return int(digits)


def _number(text: str, where: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: {name} {text!r} is not a finite number")
    return value


def _ratings(
    path: Path, rows: _Rows, names: tuple[str, str, str, str]
) -> list[tuple[int, int, int, int]]:
    """Parse (user, item, rating, timestamp) rows into (line, user, item, timestamp)."""
    out = []
    for line, f in rows:
        where = f"{path.name} line {line}"
        _number(f[2], where, names[2])
        out.append((line, *(_int(f[k], where, names[k]) for k in (0, 1, 3))))
    return out  # type: ignore[return-value]


def _genres(text: str, sep: str = "|") -> tuple[str, ...]:
    return () if text in ("", _NO_GENRES) else tuple(g for g in text.split(sep) if g)


# ---------------------------------------------------------------- assembling


def _first_definitions(path: Path, rows: list[tuple[int, int]], what: str) -> dict[int, int]:
    """Map each id to its line; a repeated id is an error."""
    seen: dict[int, int] = {}
    for line, key in rows:
        if key in seen:
            raise DataError(
                f"{path.name} line {line}: {what} {key} already defined on line {seen[key]}"
            )
        seen[key] = line
    return seen


def _lookup(
    ids: np.ndarray, raw: np.ndarray, lines: np.ndarray, what: tuple[str, ...]
) -> np.ndarray:
    """Return the index of each ``raw`` id in the sorted ``ids``; an unknown id is an error.

    ``what`` names (ratings file, id kind, table file) for the message.
    """
    index = np.searchsorted(ids, raw).clip(max=len(ids) - 1)
    if len(bad := np.flatnonzero(ids[index] != raw)):
        path, kind, table = what
        raise DataError(f"{path} line {lines[bad[0]]}: {kind} {raw[bad[0]]} is not in {table}")
    return index.astype(np.int64)


def _build(
    name: str,
    paths: tuple[Path, Path, Path | None],
    ratings: list[tuple[int, int, int, int]],
    catalogue: list[tuple[int, int, str, tuple[str, ...]]],
    user_rows: list[tuple[int, int, dict[str, Any]]] | None,
    min_interactions: int,
) -> Interactions:
    """Check cross-file consistency; turn parsed ratings, items and users into Interactions."""
    ratings_path, items_path, users_path = paths
    _first_definitions(items_path, [(line, item) for line, item, _, _ in catalogue], "item id")
    items = {item: (title, genres) for _, item, title, genres in catalogue}
    item_ids = np.array(sorted(items), dtype=np.int64)
    lines, raw_users, raw_items, timestamps = (
        np.array(column, dtype=np.int64) for column in zip(*ratings, strict=True)
    )
    what = (ratings_path.name, "item id", items_path.name)
    item_index = _lookup(item_ids, raw_items, lines, what)
    user_lines: dict[int, int] = {}
    if user_rows is not None and users_path is not None:
        user_lines = _first_definitions(users_path, [(r[0], r[1]) for r in user_rows], "user id")
        user_ids = np.array(sorted(user_lines), dtype=np.int64)
        what = (ratings_path.name, "user id", users_path.name)
        user_index = _lookup(user_ids, raw_users, lines, what)
    else:
        user_ids, user_index = np.unique(raw_users, return_inverse=True)
    counts = np.bincount(user_index, minlength=len(user_ids))
    short = np.flatnonzero(counts < min_interactions)
    if len(short):
        user, count = int(user_ids[short[0]]), int(counts[short[0]])
        path = ratings_path if count else (users_path or ratings_path)
        line = int(lines[raw_users == user][0]) if count else user_lines[user]
        raise DataError(
            f"{path.name} line {line}: user {user} has {count} interactions, "
            f"fewer than min_interactions={min_interactions} (pass 0 to keep such users)"
        )
    by_user = {user: attrs for _, user, attrs in user_rows or ()}
    keys = next(iter(by_user.values()), {}).keys()
    return Interactions(
        name=name,
        item_ids=item_ids,
        item_texts=tuple(item_text(*items[i]) for i in item_ids.tolist()),
        item_genres=tuple(items[i][1] for i in item_ids.tolist()),
        user_ids=user_ids.astype(np.int64),
        users=user_index.astype(np.int64),
        items=item_index,
        timestamps=timestamps,
        user_attrs={k: np.array([by_user[u][k] for u in user_ids.tolist()]) for k in keys},
    )


# ---------------------------------------------------------------- loaders


def load_ml_latest_small(data_dir: _DataDir = None, *, min_interactions: int = 3) -> Interactions:
    """Load MovieLens latest-small: ``ratings.csv`` and ``movies.csv`` (UTF-8 CSV, headers)."""
    root = resolve_data_dir("ml-latest-small", data_dir)
    paths = (root / "ratings.csv", root / "movies.csv", None)
    catalogue = [
        (line, _int(f[0], f"movies.csv line {line}", "movieId"), f[1].strip(), _genres(f[2]))
        for line, f in _csv_rows(paths[1], ("movieId", "title", "genres"))
    ]
    names = ("userId", "movieId", "rating", "timestamp")
    ratings = _ratings(paths[0], _csv_rows(paths[0], names), names)
    return _build("ml-latest-small", paths, ratings, catalogue, None, min_interactions)


def load_ml_100k(data_dir: _DataDir = None, *, min_interactions: int = 3) -> Interactions:
    """Load MovieLens 100K: ``u.data`` (tab), ``u.item`` and ``u.user`` (``|``), latin-1."""
    root = resolve_data_dir("ml-100k", data_dir)
    paths = (root / "u.data", root / "u.item", root / "u.user")
    catalogue = []
    for line, f in _delimited_rows(paths[1], "latin-1", "|", 5 + len(ML_100K_GENRES)):
        if any(flag not in ("0", "1") for flag in f[5:]):
            raise DataError(f"u.item line {line}: genre flags {f[5:]} must each be 0 or 1")
        genres = tuple(g for g, flag in zip(ML_100K_GENRES, f[5:], strict=True) if flag == "1")
        catalogue.append((line, _int(f[0], f"u.item line {line}", "item id"), f[1].strip(), genres))
    users = [
        (line, _int(f[0], f"u.user line {line}", "user id"),
         {"age": _int(f[1], f"u.user line {line}", "age"), "gender": f[2], "occupation": f[3]})
        for line, f in _delimited_rows(paths[2], "latin-1", "|", 5)
    ]  # fmt: skip
    rows = _delimited_rows(paths[0], "latin-1", "\t", 4)
    ratings = _ratings(paths[0], rows, ("user id", "item id", "rating", "timestamp"))
    return _build("ml-100k", paths, ratings, catalogue, users, min_interactions)


def load_ml_1m(data_dir: _DataDir = None, *, min_interactions: int = 3) -> Interactions:
    """Load MovieLens 1M: ``ratings.dat``, ``movies.dat``, ``users.dat`` (``::``, latin-1)."""
    root = resolve_data_dir("ml-1m", data_dir)
    paths = (root / "ratings.dat", root / "movies.dat", root / "users.dat")
    catalogue = [
        (line, _int(f[0], f"movies.dat line {line}", "MovieID"), f[1].strip(), _genres(f[2]))
        for line, f in _delimited_rows(paths[1], "latin-1", "::", 3)
    ]
    users = [
        (line, _int(f[0], f"users.dat line {line}", "UserID"),
         {"gender": f[1], "age": _int(f[2], f"users.dat line {line}", "Age"),
          "occupation": _int(f[3], f"users.dat line {line}", "Occupation")})
        for line, f in _delimited_rows(paths[2], "latin-1", "::", 5)
    ]  # fmt: skip
    rows = _delimited_rows(paths[0], "latin-1", "::", 4)
    ratings = _ratings(paths[0], rows, ("UserID", "MovieID", "Rating", "Timestamp"))
    return _build("ml-1m", paths, ratings, catalogue, users, min_interactions)


def _load_synthetic(
    data_dir: _DataDir = None, *, min_interactions: int = 3, **kwargs: Any
) -> Interactions:
    """Generate the synthetic data set (``data_dir`` is ignored; ``kwargs`` go to the generator)."""
    data = generate(**kwargs)
    if (fewest := np.bincount(data.users, minlength=data.n_users).min()) < min_interactions:
        raise DataError(f"synthetic: a user has {fewest} interactions, < {min_interactions}")
    return data


DATASETS: dict[str, Callable[..., Interactions]] = {
    "ml-latest-small": load_ml_latest_small,
    "ml-100k": load_ml_100k,
    "ml-1m": load_ml_1m,
    "synthetic": _load_synthetic,
}


def load_dataset(
    name: str, data_dir: _DataDir = None, *, min_interactions: int = 3, **kwargs: Any
) -> Interactions:
    """Load a registered data set by name.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`.
    data_dir : str or PathLike, optional
        Folder holding the files; see :func:`common.download.resolve_data_dir` for the
        default.
    min_interactions : int
        Users with fewer interactions raise :class:`DataError`; 0 disables the check.
    **kwargs
        Options of the synthetic generator (``n_users``, ``n_items``, ``seed``, ...).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {sorted(DATASETS)}")
    if min_interactions < 0:
        raise ValueError(f"`min_interactions` must be >= 0, got {min_interactions}")
    if kwargs and name != "synthetic":
        raise ValueError(f"data set {name!r} takes no options, got {sorted(kwargs)}")
    return DATASETS[name](data_dir, min_interactions=min_interactions, **kwargs)
