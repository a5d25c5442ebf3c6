"""Reading one data table (CSV with a header, header-less delimited text, Parquet) into rows."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.data.interactions import DataError

CHECKSUMS = "SHA256SUMS"  # `sha256sum` output beside the data files; verified when present


@dataclass(frozen=True)
class Table:
    """Where one table lives and how its text is laid out.

    ``file`` is a path, absolute or relative to the data folder; a ``.parquet`` file is read
    with pyarrow (``sep``, ``encoding`` and ``names`` then do not apply). ``names`` are the
    field names of a header-less file; empty means the first line is the header.
    """

    file: str
    names: tuple[str, ...] = ()
    sep: str = ","
    encoding: str = "utf-8-sig"


@dataclass
class Rows:
    """The rows of one table, each with the 1-based line (text) or row (Parquet) it came from."""

    name: str  # the file's name, for messages
    unit: str  # "line" or "row"
    numbers: list[int]
    fields: list[list[str]]  # re-ordered to the requested columns

    def at(self, i: int) -> str:
        """``"<file> line <n>"`` of row ``i``: how every message about it starts."""
        return f"{self.name} {self.unit} {self.numbers[i]}"

    def __len__(self) -> int:
        return len(self.numbers)


def read_table(folder: Path, table: Table, columns: tuple[str, ...]) -> Rows:
    """Read ``columns`` of ``table`` (in that order), verifying the folder's SHA256SUMS."""
    path = folder / table.file
    if not path.is_file():
        raise DataError(f"{path.name}: file not found at {path}")
    raw = path.read_bytes()
    verify_checksum(path, raw)
    if path.suffix.lower() == ".parquet":
        return _parquet_rows(path, raw, columns)
    text = _decode(path, raw, table.encoding)
    if table.names:
        return _delimited_rows(path, text, table, columns)
    return _csv_rows(path, text, table.sep, columns)


def verify_checksum(path: Path, raw: bytes) -> None:
    """If ``SHA256SUMS`` beside ``path`` lists it, ``raw`` must have that SHA-256."""
    sums = path.parent / CHECKSUMS
    if not sums.is_file():
        return
    expected = read_checksums(sums).get(path.name)
    digest = hashlib.sha256(raw).hexdigest()
    if expected is not None and digest != expected:
        raise DataError(
            f"{path.name}: SHA-256 {digest} does not match {sums} ({expected}); the file was "
            "modified or damaged: restore it, or remove its line from SHA256SUMS if the change "
            "is intended"
        )


def read_checksums(sums: Path) -> dict[str, str]:
    """Parse a ``sha256sum`` file: ``<64 hex digits>  <file name>`` per line."""
    out: dict[str, str] = {}
    for number, line in enumerate(sums.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, fname = line.partition(" ")
        fname = fname.strip().lstrip("*")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not fname:
            raise DataError(f"{sums.name} line {number}: expected '<sha256>  <file>', got {line!r}")
        out[fname] = digest
    return out


def _decode(path: Path, raw: bytes, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path.name} line {line}: bytes are not valid {encoding.removesuffix('-sig')} "
            f"({err.reason})"
        ) from None


def _csv_rows(path: Path, text: str, sep: str, columns: tuple[str, ...]) -> Rows:
    """Rows of a CSV file with a header line (quoted fields may span lines)."""
    reader = csv.reader((line + "\n" for line in text.split("\n")), delimiter=sep, strict=True)
    rows = Rows(path.name, "line", [], [])
    start = 1  # first line of the record being read
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
                rows.numbers.append(start)
                rows.fields.append([fields[i] for i in pos])
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"{path.name} line {start}: {err}") from None
    except StopIteration:
        raise DataError(f"{path.name} line 1: no header (the file is empty)") from None
    if not rows.numbers:
        raise DataError(f"{path.name} line 2: file has no data rows")
    return rows


def _delimited_rows(path: Path, text: str, table: Table, columns: tuple[str, ...]) -> Rows:
    """Rows of a header-less file of ``sep``-separated fields; blank lines are skipped."""
    pos = [table.names.index(c) for c in columns]
    rows = Rows(path.name, "line", [], [])
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split(table.sep)
        if len(fields) != len(table.names):
            raise DataError(
                f"{path.name} line {number}: expected {len(table.names)} fields, got {len(fields)}"
            )
        rows.numbers.append(number)
        rows.fields.append([fields[i] for i in pos])
    if not rows.numbers:
        raise DataError(f"{path.name} line 1: file has no data rows")
    return rows


def _parquet_rows(path: Path, raw: bytes, columns: tuple[str, ...]) -> Rows:
    """Rows of a Parquet file (row numbers are 1-based data rows); values become text."""
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise DataError(
            f"{path.name}: reading Parquet needs pyarrow (pip install pyarrow)"
        ) from None
    try:
        table = pq.read_table(io.BytesIO(raw))
    except Exception as err:  # pyarrow raises its own ArrowInvalid / OSError kinds
        raise DataError(f"{path.name}: not a readable Parquet file ({err})") from None
    if missing := [c for c in columns if c not in table.column_names]:
        raise DataError(f"{path.name}: columns {table.column_names} lack {missing}")
    if table.num_rows == 0:
        raise DataError(f"{path.name} row 1: file has no data rows")
    values = [[_text(v) for v in table.column(c).to_pylist()] for c in columns]
    fields = [list(r) for r in zip(*values, strict=True)]
    return Rows(path.name, "row", list(range(1, table.num_rows + 1)), fields)


def _text(value: Any) -> str:
    """A Parquet cell as the text a CSV file would hold ("" for null)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "" if value is None else "nan"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
