"""A `Layout`'s tables read row by row: interactions, items (texts, genres) and users."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.data.interactions import DataError, item_text
from common.data.layout import Layout, parse_int, parse_key, parse_number, parse_time
from common.data.tables import Rows, Table, read_table


@dataclass
class ParsedInteractions:
    """The interaction rows' fields, parsed (ids not yet mapped to indices)."""

    lines: list[int]  # line of each interaction
    users: list[str | int]
    items: list[str | int]
    times: list[float | int]
    weights: list[float] | None


def read_interactions(folder: Path, lay: Layout) -> tuple[Rows, ParsedInteractions]:
    """The interactions table: user, item, timestamp and (if there) weight of every row."""
    weight = lay.weight
    if weight and lay.weight_optional and not _has_column(folder, lay.interactions, weight):
        weight = ""
    cols = (lay.user, lay.item, lay.timestamp, *((weight,) if weight else ()))
    rows = read_table(folder, lay.interactions, cols)
    out = ParsedInteractions(rows.numbers, [], [], [], [] if weight else None)
    for i, f in enumerate(rows.fields):
        where = rows.at(i)
        if out.weights is not None:
            out.weights.append(parse_number(f[3], where, weight))
        out.users.append(parse_key(f[0], where, lay.user, lay.integer_ids))
        out.items.append(parse_key(f[1], where, lay.item, lay.integer_ids))
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


def read_items(folder: Path, lay: Layout) -> tuple[Rows, list[str | int], list[str], list[tuple]]:
    """Item ids, texts and genres, in file order."""
    text_cols = tuple(c for c in lay.text if c != lay.genres)
    source = lay.genre_flags or ((lay.genres,) if lay.genres else ())
    rows = read_table(folder, lay.items, (lay.item_id, *text_cols, *source))
    keys: list[str | int] = []
    texts, genres = [], []
    for i, f in enumerate(rows.fields):
        where = rows.at(i)
        labels = _labels(lay, f[1 + len(text_cols) :], where)
        keys.append(parse_key(f[0], where, lay.item_id, lay.integer_ids))
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


def read_users(folder: Path, lay: Layout) -> tuple[Rows, list[int | str], list[dict]] | None:
    """User ids and attributes of the optional users table (None without one)."""
    if lay.users is None:
        return None
    rows = read_table(folder, lay.users, (lay.user_id, *(a[0] for a in lay.user_attrs)))
    keys, attrs = [], []
    for i, f in enumerate(rows.fields):
        where = rows.at(i)
        keys.append(parse_key(f[0], where, lay.user_id, lay.integer_ids))
        attrs.append(
            {
                key: parse_int(v, where, col) if is_int else v
                for (col, key, is_int), v in zip(lay.user_attrs, f[1:], strict=True)
            }
        )
    return rows, keys, attrs
