"""The generic interaction format: a `Layout` maps files and columns onto it; `load_layout`.

Every loader goes through here: a site's own files (``data.dataset = "generic"``) and the
MovieLens releases, which are layouts of their own (column names, separators, encodings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.interactions import DataError, Interactions
from common.data.layout import Layout, id_array
from common.data.layout_read import ParsedInteractions, read_interactions, read_items, read_users
from common.data.tables import Rows


def load_layout(folder: Path, lay: Layout, *, min_interactions: int) -> Interactions:
    """Read and check the files of ``lay`` in ``folder``; every error names file and line."""
    item_rows, item_keys, texts, genres = read_items(folder, lay)
    users = read_users(folder, lay)
    rows, parsed = read_interactions(folder, lay)
    both = id_array(item_keys + parsed.items)
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
    parsed: ParsedInteractions,
    rows: Rows,
    lines: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, dict, dict[str, np.ndarray]]:
    """(sorted user ids, each interaction's user index, users-file line per id, attributes)."""
    if users is None:
        raw = id_array(parsed.users)
        user_ids, index = np.unique(raw, return_inverse=True)
        return user_ids, index, {}, {}
    user_rows, keys, attrs = users
    both = id_array(keys + parsed.users)
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
