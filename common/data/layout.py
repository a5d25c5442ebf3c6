"""The generic format's `Layout` (how files and columns map onto it) and its field parsers."""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass

import numpy as np

from common.data.interactions import DataError
from common.data.tables import Table

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


def parse_key(text: str, where: str, name: str, integer: bool) -> str | int:
    """An id: a 64-bit integer when `integer`, else the non-empty text without blanks."""
    if integer:
        return parse_int(text, where, name)
    key = text.strip(_WS)
    if not key:
        raise DataError(f"{where}: {name} is empty")
    return key


def id_array(keys: list[str | int]) -> np.ndarray:
    """Integer ids as int64 when every id is an integer, else strings (sorted the same way)."""
    if all(isinstance(k, int) for k in keys):
        return np.array(keys, dtype=np.int64)
    if all(isinstance(k, int) or INT.fullmatch(str(k)) for k in keys):
        return np.array([int(k) for k in keys], dtype=np.int64)
    return np.array([str(k) for k in keys], dtype=np.str_)
