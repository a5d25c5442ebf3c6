"""The generic interaction format: a `Layout` maps files and columns onto it; `load_layout`.

Every loader goes through here: a site's own files (``data.dataset = "generic"``) and the
MovieLens releases, which are layouts of their own (column names, separators, encodings).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.interactions import DataError, Interactions, item_text
from common.data.tables import Rows, Table, read_table

INT = re.compile(r"[+-]?[0-9]{1,19}")
_WS = " \t\r\n"


@dataclass(frozen=True)
class Layout:
    """How a data set's files map onto the generic format.

    Interactions: ``user``, ``item``, ``timestamp`` and an optional ``weight`` column.
    Items: the ``item_id`` column plus the ``text`` columns (the item text is the first one's
    value, then ``". "`` and the others' non-empty values joined by ``", "``); the optional
    ``genres`` column holds ``genre_sep``-separated labels (they are the item's genres, and
    its text parts when it is also a text column). An optional users table gives per-user
    attributes ``(column, key, is_int)``.
    """

    name: str
    interactions: Table
    items: Table
    user: str = "user"
    item: str = "item"
    timestamp: str = "timestamp"
    weight: str = ""  # "" = no weight column
    weight_optional: bool = False  # the weight column may be absent (then every weight is 1)
    item_id: str = "item"
    text: tuple[str, ...] = ("title",)
    genres: str = ""
    genre_sep: str = "|"
    no_genres: tuple[str, ...] = ()  # placeholder values that mean "no genres"
    integer_ids: bool = False  # ids must be integers (else: integers if all are, else strings)
    integer_times: bool = False  # timestamps must be integers (else: numbers or ISO 8601)
    users: Table | None = None
    user_id: str = ""
    user_attrs: tuple[tuple[str, str, bool], ...] = ()
    genre_flags: tuple[str, ...] = ()  # 0/1 columns named after genres (ml-100k) instead


# ---------------------------------------------------------------- values


def parse_int(text: str, where: str, name: str) -> int:
    """A 64-bit integer (surrounding blanks allowed) or a `DataError` at ``where``."""
    digits = text.strip(_WS)
    if not INT.fullmatch(digits) or not -(2**63) <= int(digits) < 2**63:
        raise DataError(f"{where}: {name} {text!r} is not an integer")
    return int(digits)


def parse_number(text: str, where: str, name: str) -> float:
    """A finite number or a `DataError` at ``where``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: {name} {text!r} is not a finite number")
    return value


def parse_time(text: str, where: str, name: str) -> float:
    """A timestamp: a finite number (e.g. Unix seconds) or an ISO 8601 date or date-time."""
    try:
        value = float(text)
    except ValueError:
        try:
            stamp = dt.datetime.fromisoformat(text.strip(_WS))
        except ValueError:
            raise DataError(
                f"{where}: {name} {text!r} is not a number (or an ISO 8601 date)"
            ) from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        return stamp.timestamp()
    if not math.isfinite(value):
        raise DataError(f"{where}: {name} {text!r} is not a finite number")
    return value


def _key(text: str, where: str, name: str, integer: bool) -> str | int:
    if integer:
        return parse_int(text, where, name)
    key = text.strip(_WS)
    if not key:
        raise DataError(f"{where}: {name} is empty")
    return key


def _id_array(keys: list[str | int]) -> np.ndarray:
    """Integer ids as int64 when every id is an integer, else strings (sorted the same way)."""
    if all(isinstance(k, int) for k in keys):
        return np.array(keys, dtype=np.int64)
    if all(isinstance(k, int) or INT.fullmatch(str(k)) for k in keys):
        return np.array([int(k) for k in keys], dtype=np.int64)
    return np.array([str(k) for k in keys], dtype=np.str_)


# ---------------------------------------------------------------- the tables


@dataclass
class _Parsed:
    lines: list[int]  # line of each interaction
    users: list[str | int]
    items: list[str | int]
    times: list[float | int]
    weights: list[float] | None


def _interactions(folder: Path, lay: Layout) -> tuple[Rows, _Parsed]:
    weight = lay.weight
    if weight and lay.weight_optional and not _has_column(folder, lay.interactions, weight):
        weight = ""
    cols = (lay.user, lay.item, lay.timestamp, *((weight,) if weight else ()))
    rows = read_table(folder, lay.interactions, cols)
    out = _Parsed(rows.numbers, [], [], [], [] if weight else None)
    for i, f in enumerate(rows.fields):
        where = rows.at(i)
        if out.weights is not None:
            out.weights.append(parse_number(f[3], where, weight))
        out.users.append(_key(f[0], where, lay.user, lay.integer_ids))
        out.items.append(_key(f[1], where, lay.item, lay.integer_ids))
        if lay.integer_times:
            out.times.append(parse_int(f[2], where, lay.timestamp))
        else:
            out.times.append(parse_time(f[2], where, lay.timestamp))
    return rows, out


def _has_column(folder: Path, table: Table, column: str) -> bool:
    """Whether an optional column is there (header of a CSV, schema of a Parquet file)."""
    path = folder / table.file
    if table.names:
        return column in table.names
    if not path.is_file():
        return False  # read_table reports the missing file
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq

            return column in pq.read_schema(path).names
        except Exception:  # noqa: BLE001 - read_table reports an unreadable file
            return False
    with open(path, encoding=table.encoding, errors="replace", newline="") as fh:
        header = fh.readline()
    return column in next(iter(_csv_header(header, table.sep)), [])


def _csv_header(line: str, sep: str) -> list[list[str]]:
    import csv

    return list(csv.reader([line], delimiter=sep))


def _items(folder: Path, lay: Layout) -> tuple[Rows, list[str | int], list[str], list[tuple]]:
    """Item ids, texts and genres, in file order."""
    text_cols = tuple(c for c in lay.text if c != lay.genres)
    source = lay.genre_flags or ((lay.genres,) if lay.genres else ())
    rows = read_table(folder, lay.items, (lay.item_id, *text_cols, *source))
    keys: list[str | int] = []
    texts, genres = [], []
    for i, f in enumerate(rows.fields):
        where = rows.at(i)
        labels = _labels(lay, f[1 + len(text_cols) :], where)
        keys.append(_key(f[0], where, lay.item_id, lay.integer_ids))
        parts = iter(v.strip() for v in f[1 : 1 + len(text_cols)])
        values = [labels if c == lay.genres else (next(parts),) for c in lay.text]
        flat = [v for group in values for v in group if v]
        if not flat:
            raise DataError(f"{where}: item {keys[-1]} has no text in columns {list(lay.text)}")
        head = values[0][0] if lay.text[0] != lay.genres and values[0][0] else ""
        texts.append(item_text(head, flat[1:]) if head else ", ".join(flat))
        genres.append(labels)
    return rows, keys, texts, genres


def _labels(lay: Layout, fields: list[str], where: str) -> tuple[str, ...]:
    """An item's genres: 0/1 flag columns, or one column of separated labels."""
    if lay.genre_flags:
        if any(flag not in ("0", "1") for flag in fields):
            raise DataError(f"{where}: genre flags {fields} must each be 0 or 1")
        return tuple(g for g, flag in zip(lay.genre_flags, fields, strict=True) if flag == "1")
    if not fields or fields[0] in lay.no_genres:
        return ()
    return tuple(g for g in fields[0].split(lay.genre_sep) if g)


def _users(folder: Path, lay: Layout) -> tuple[Rows, list[int | str], list[dict]] | None:
    if lay.users is None:
        return None
    rows = read_table(folder, lay.users, (lay.user_id, *(a[0] for a in lay.user_attrs)))
    keys, attrs = [], []
    for i, f in enumerate(rows.fields):
        where = rows.at(i)
        keys.append(_key(f[0], where, lay.user_id, lay.integer_ids))
        attrs.append(
            {
                key: parse_int(v, where, col) if is_int else v
                for (col, key, is_int), v in zip(lay.user_attrs, f[1:], strict=True)
            }
        )
    return rows, keys, attrs


# ---------------------------------------------------------------- assembling


def load_layout(folder: Path, lay: Layout, *, min_interactions: int) -> Interactions:
    """Read and check the files of ``lay`` in ``folder``; every error names file and line."""
    item_rows, item_keys, texts, genres = _items(folder, lay)
    users = _users(folder, lay)
    rows, parsed = _interactions(folder, lay)
    both = _id_array(item_keys + parsed.items)
    catalogue, raw_items = both[: len(item_keys)], both[len(item_keys) :]
    _first_definitions(item_rows, catalogue, "item id")
    order = np.argsort(catalogue, kind="stable")
    item_ids = catalogue[order]
    lines = np.array(rows.numbers, dtype=np.int64)
    item_index = _lookup(item_ids, raw_items, lines, (rows, "item id", item_rows.name))
    user_ids, user_index, user_lines, attrs = _user_index(lay, users, parsed, rows, lines)
    _check_counts(user_ids, user_index, lines, min_interactions, (rows, users, user_lines))
    times = np.array(parsed.times)
    integral = lay.integer_times or bool(np.all(times == np.round(times)))
    return Interactions(
        name=lay.name,
        item_ids=item_ids,
        item_texts=tuple(texts[i] for i in order.tolist()),
        item_genres=tuple(genres[i] for i in order.tolist()),
        user_ids=user_ids,
        users=user_index.astype(np.int64),
        items=item_index,
        timestamps=times.astype(np.int64 if integral else np.float64),
        user_attrs=attrs,
        weights=None if parsed.weights is None else np.array(parsed.weights, dtype=np.float64),
    )


def _user_index(
    lay: Layout,
    users: tuple[Rows, list[int | str], list[dict]] | None,
    parsed: _Parsed,
    rows: Rows,
    lines: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, dict, dict[str, np.ndarray]]:
    """(sorted user ids, each interaction's user index, users-file line per id, attributes)."""
    if users is None:
        raw = _id_array(parsed.users)
        user_ids, index = np.unique(raw, return_inverse=True)
        return user_ids, index, {}, {}
    user_rows, keys, attrs = users
    both = _id_array(keys + parsed.users)
    table, raw = both[: len(keys)], both[len(keys) :]
    user_lines = _first_definitions(user_rows, table, "user id")
    user_ids = np.sort(table)
    index = _lookup(user_ids, raw, lines, (rows, "user id", user_rows.name))
    by_user = dict(zip(table.tolist(), attrs, strict=True))
    names = next(iter(attrs), {}).keys()
    return (
        user_ids,
        index,
        user_lines,
        {k: np.array([by_user[u][k] for u in user_ids.tolist()]) for k in names},
    )


def _first_definitions(rows: Rows, keys: np.ndarray, what: str) -> dict:
    """Map each id to its line; a repeated id is an error naming both lines."""
    seen: dict = {}
    for i, key in enumerate(keys.tolist()):
        if key in seen:
            raise DataError(f"{rows.at(i)}: {what} {key} already defined on line {seen[key]}")
        seen[key] = rows.numbers[i]
    return seen


def _lookup(ids: np.ndarray, raw: np.ndarray, lines: np.ndarray, what: tuple) -> np.ndarray:
    """The index of each ``raw`` id in the sorted ``ids``; an unknown id is an error.

    ``what`` = (the interaction rows, id kind, the table's file name) for the message.
    """
    rows, kind, table = what
    if len(ids) == 0 or ids.dtype.kind != raw.dtype.kind:
        bad = np.zeros(1, dtype=np.int64)
    else:
        index = np.searchsorted(ids, raw).clip(max=len(ids) - 1)
        bad = np.flatnonzero(ids[index] != raw)
    if len(bad):
        raise DataError(
            f"{rows.name} {rows.unit} {lines[bad[0]]}: {kind} {raw[bad[0]]} is not in {table}"
        )
    return index.astype(np.int64)


def _check_counts(
    user_ids: np.ndarray,
    user_index: np.ndarray,
    lines: np.ndarray,
    min_interactions: int,
    where: tuple,
) -> None:
    """A user with fewer than ``min_interactions`` interactions is an error naming the user."""
    rows, users, user_lines = where
    counts = np.bincount(user_index, minlength=len(user_ids))
    short = np.flatnonzero(counts < min_interactions)
    if not len(short):
        return
    user, count = user_ids[short[0]].item(), int(counts[short[0]])
    if count:
        at = f"{rows.name} {rows.unit} {int(lines[user_index == short[0]][0])}"
    else:
        at = f"{users[0].name} line {user_lines[user]}"
    raise DataError(
        f"{at}: user {user} has {count} interactions, fewer than "
        f"min_interactions={min_interactions} (pass 0 to keep such users)"
    )
