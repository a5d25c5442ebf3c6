"""A site's list of new items: catalogue item ids, one per line (`data.new-items-file`).

New means "no popularity evidence yet" (`common.model.new_items` scores them by text). The list
is part of the public catalogue, like the item text: it never leaves the site and changes
nothing that is trained or released. Blank lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.interactions import DataError


def resolve(path: str, data_dir: str) -> Path:
    """`path` as given when absolute, else relative to `data_dir` when that is set."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or not data_dir else Path(data_dir).expanduser() / p


def read_new_items(path: Path, item_ids: np.ndarray) -> np.ndarray:
    """Sorted unique item indices (into `item_ids`, sorted ascending) listed in `path`.

    Raises `DataError` naming the file and the 1-based line of an id not in the catalogue.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"data.new-items-file: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"data.new-items-file {path}: not UTF-8 text ({exc.reason})") from None
    numeric = np.issubdtype(np.asarray(item_ids).dtype, np.integer)
    index = {str(v): i for i, v in enumerate(np.asarray(item_ids).tolist())}
    found: list[int] = []
    for no, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        key = text
        if numeric:
            try:
                key = str(int(text))
            except ValueError:
                raise DataError(
                    f"data.new-items-file {path} line {no}: {text!r} is not an item id "
                    "(the catalogue's ids are integers)"
                ) from None
        if key not in index:
            raise DataError(
                f"data.new-items-file {path} line {no}: item id {text!r} is not in the catalogue"
            )
        found.append(index[key])
    return np.unique(np.asarray(found, dtype=np.int64))
