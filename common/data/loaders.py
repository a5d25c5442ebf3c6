"""Interaction data: the data-set registry; MovieLens as layouts of the generic format."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.data.download import resolve_data_dir
from common.data.generic import load_layout
from common.data.interactions import DataError, Interactions, item_text
from common.data.layout import Layout
from common.data.synthetic import generate
from common.data.tables import Table

ML_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_DataDir = str | os.PathLike[str] | None

# ---------------------------------------------------------------- MovieLens = layouts

ML_LATEST_SMALL = Layout(
    name="ml-latest-small",
    interactions=Table("ratings.csv"),
    items=Table("movies.csv"),
    user="userId", item="movieId", timestamp="timestamp", weight="rating",
    item_id="movieId", text=("title", "genres"), genres="genres",
    no_genres=("(no genres listed)",), integer_ids=True, integer_times=True,
)  # fmt: skip
ML_100K = Layout(
    name="ml-100k",
    interactions=Table(
        "u.data", ("user id", "item id", "rating", "timestamp"), "\t", "latin-1"
    ),
    items=Table(
        "u.item",
        ("item id", "title", "release date", "video release date", "IMDb URL", *ML_100K_GENRES),
        "|",
        "latin-1",
    ),
    users=Table("u.user", ("user id", "age", "gender", "occupation", "zip code"), "|", "latin-1"),
    user="user id", item="item id", timestamp="timestamp", weight="rating",
    item_id="item id", text=("title", "genres"), genres="genres", genre_flags=ML_100K_GENRES,
    integer_ids=True, integer_times=True, user_id="user id",
    user_attrs=(("age", "age", True), ("gender", "gender", False),
                ("occupation", "occupation", False)),
)  # fmt: skip
ML_1M = Layout(
    name="ml-1m",
    interactions=Table(
        "ratings.dat", ("UserID", "MovieID", "Rating", "Timestamp"), "::", "latin-1"
    ),
    items=Table("movies.dat", ("MovieID", "Title", "Genres"), "::", "latin-1"),
    users=Table(
        "users.dat", ("UserID", "Gender", "Age", "Occupation", "Zip-code"), "::", "latin-1"
    ),
    user="UserID", item="MovieID", timestamp="Timestamp", weight="Rating",
    item_id="MovieID", text=("Title", "Genres"), genres="Genres",
    no_genres=("(no genres listed)",), integer_ids=True, integer_times=True, user_id="UserID",
    user_attrs=(("Gender", "gender", False), ("Age", "age", True),
                ("Occupation", "occupation", True)),
)  # fmt: skip
MOVIELENS = {lay.name: lay for lay in (ML_LATEST_SMALL, ML_100K, ML_1M)}


def load_ml_latest_small(data_dir: _DataDir = None, *, min_interactions: int = 3) -> Interactions:
    """Load MovieLens latest-small: ``ratings.csv`` and ``movies.csv`` (UTF-8 CSV, headers)."""
    root = resolve_data_dir("ml-latest-small", data_dir)
    return load_layout(root, ML_LATEST_SMALL, min_interactions=min_interactions)


def load_ml_100k(data_dir: _DataDir = None, *, min_interactions: int = 3) -> Interactions:
    """Load MovieLens 100K: ``u.data`` (tab), ``u.item`` and ``u.user`` (``|``), latin-1."""
    root = resolve_data_dir("ml-100k", data_dir)
    return load_layout(root, ML_100K, min_interactions=min_interactions)


def load_ml_1m(data_dir: _DataDir = None, *, min_interactions: int = 3) -> Interactions:
    """Load MovieLens 1M: ``ratings.dat``, ``movies.dat``, ``users.dat`` (``::``, latin-1)."""
    root = resolve_data_dir("ml-1m", data_dir)
    return load_layout(root, ML_1M, min_interactions=min_interactions)


# ---------------------------------------------------------------- your own data

GENERIC_DEFAULTS: dict[str, str] = {
    "interactions": "",  # "" = interactions.csv, else interactions.parquet, in the folder
    "items": "",  # "" = items.csv, else items.parquet
    "user": "user",
    "item": "item",
    "timestamp": "timestamp",
    "weight": "weight",  # read when the file has it; "" = never
    "item_id": "",  # "" = the same name as `item`
    "text": "title",  # comma-separated
    "genres": "",
}


def _default_file(folder: Path, stem: str) -> str:
    for suffix in (".csv", ".parquet"):
        if (folder / f"{stem}{suffix}").is_file():
            return f"{stem}{suffix}"
    return f"{stem}.csv"  # reported as not found


def generic_layout(folder: Path, **options: str) -> Layout:
    """The layout of a site's own files; ``options`` as in :data:`GENERIC_DEFAULTS`."""
    if unknown := sorted(set(options) - set(GENERIC_DEFAULTS)):
        known = sorted(GENERIC_DEFAULTS)
        raise ValueError(f"unknown generic-format option(s) {unknown}; known: {known}")
    o = GENERIC_DEFAULTS | options
    text = tuple(c.strip() for c in o["text"].split(",") if c.strip())
    if not text:
        raise ValueError("the generic format needs at least one item text column")
    return Layout(
        name="generic",
        interactions=Table(o["interactions"] or _default_file(folder, "interactions")),
        items=Table(o["items"] or _default_file(folder, "items")),
        user=o["user"], item=o["item"], timestamp=o["timestamp"], weight=o["weight"],
        weight_optional=o["weight"] == GENERIC_DEFAULTS["weight"],
        item_id=o["item_id"] or o["item"], text=text, genres=o["genres"],
    )  # fmt: skip


def load_generic(
    data_dir: _DataDir = None, *, min_interactions: int = 3, **options: str
) -> Interactions:
    """Load a site's own interactions + items files (the generic format, CSV or Parquet)."""
    if data_dir is None or str(data_dir) == "":
        files = [options.get("interactions", ""), options.get("items", "")]
        if not all(f and Path(f).is_absolute() for f in files):
            raise DataError(
                "generic: no data folder: set data.dir (node config data-dir) to the folder "
                "holding the interactions and items files"
            )
        data_dir = "/"
    folder = Path(data_dir)
    layout = generic_layout(folder, **options)
    try:
        return load_layout(folder, layout, min_interactions=min_interactions)
    except DataError as exc:
        if "lacks column" not in str(exc):
            raise
        raise DataError(f"{exc}; {_column_keys(layout)}") from None


def _column_keys(lay: Layout) -> str:
    """Which data key names each column the generic format reads (for a missing column)."""
    inter = f'user-column="{lay.user}" item-column="{lay.item}" timestamp-column="{lay.timestamp}"'
    items = f'item-id-column="{lay.item_id}" text-columns="{",".join(lay.text)}"'
    if lay.genres:
        items += f' genre-column="{lay.genres}"'
    return (
        f"the columns read are set by the data keys (a site's node config, or data.<key> in "
        f"the run config): interactions {inter}; items {items}"
    )


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
    "generic": load_generic,
    "synthetic": _load_synthetic,
}
OPTIONS = {"synthetic": ("n_users", "n_items", "seed", "n_topics", "history_len"),
           "generic": tuple(GENERIC_DEFAULTS)}  # fmt: skip


def load_dataset(
    name: str, data_dir: _DataDir = None, *, min_interactions: int = 3, **kwargs: Any
) -> Interactions:
    """Load a registered data set by name.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`.
    data_dir : str or PathLike, optional
        Folder holding the files; see :func:`common.data.download.resolve_data_dir` for the
        default.
    min_interactions : int
        Users with fewer interactions raise :class:`DataError`; 0 disables the check.
    **kwargs
        Options of the synthetic generator (``n_users``, ``n_items``, ``seed``, ...) or of
        the generic format (:data:`GENERIC_DEFAULTS`).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {sorted(DATASETS)}")
    if min_interactions < 0:
        raise ValueError(f"`min_interactions` must be >= 0, got {min_interactions}")
    if kwargs and name not in OPTIONS:
        raise ValueError(f"data set {name!r} takes no options, got {sorted(kwargs)}")
    return DATASETS[name](data_dir, min_interactions=min_interactions, **kwargs)


__all__ = [
    "DATASETS", "DataError", "Interactions", "generic_layout", "item_text", "load_dataset",
    "load_generic", "load_ml_100k", "load_ml_1m", "load_ml_latest_small",
]  # fmt: skip
