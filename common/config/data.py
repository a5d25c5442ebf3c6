"""The `data.*` section: which data set, where, and how it is split."""

from __future__ import annotations

from dataclasses import dataclass

from common.config.base import check

# The data sets `loaders.DATASETS` loads (a test keeps the two in step): checked when the
# config is parsed, so a typo stops the run before any node loads data.
DATASET_NAMES = ("ml-latest-small", "ml-100k", "ml-1m", "generic", "synthetic")


# Site-side data settings: node-config key -> the run-config key it overrides at that site
# (a site's files, its own minimum of interactions per user, its columns and item text).
NODE_DATA_KEYS = {
    "dataset": "data.dataset",
    "data-dir": "data.dir",
    "min-interactions": "data.min-interactions",
    "interactions": "data.interactions",
    "items": "data.items",
    "user-column": "data.user-column",
    "item-column": "data.item-column",
    "timestamp-column": "data.timestamp-column",
    "weight-column": "data.weight-column",
    "item-id-column": "data.item-id-column",
    "text-columns": "data.text-columns",
    "genre-column": "data.genre-column",
    "new-items-file": "data.new-items-file",
}


@dataclass(frozen=True)
class DataConfig:
    """Which data set, where it lives, and how users are split into clients."""

    dataset: str
    dir: str
    min_interactions: int
    interactions: str
    items: str
    user_column: str
    item_column: str
    timestamp_column: str
    weight_column: str
    item_id_column: str
    text_columns: str
    genre_column: str
    cold_start_share: float
    history_len: int
    partitioning: str
    num_sites: int
    dirichlet_alpha: float
    synthetic_users: int
    synthetic_items: int
    # Defaulted so that adapters written before it load.
    new_items_file: str = ""

    def __post_init__(self) -> None:
        check(
            self.dataset in DATASET_NAMES,
            "data.dataset",
            self.dataset,
            f"must be one of {DATASET_NAMES}",
        )
        for key in ("user_column", "item_column", "timestamp_column"):
            value = getattr(self, key)
            name = f"data.{key.replace('_', '-')}"
            check(bool(value.strip()), name, value, "must name a column")
        check(
            bool(self.text_column_names),
            "data.text-columns",
            self.text_columns,
            "must name at least one column of the items file, e.g. 'title'",
        )
        check(
            0.0 <= self.cold_start_share < 1.0,
            "data.cold-start-share",
            self.cold_start_share,
            "must be in [0, 1)",
        )
        check(self.history_len >= 1, "data.history-len", self.history_len, "must be >= 1")
        check(
            self.min_interactions >= 0,
            "data.min-interactions",
            self.min_interactions,
            "must be >= 0",
        )
        check(
            self.synthetic_users >= 1, "data.synthetic-users", self.synthetic_users, "must be >= 1"
        )
        check(
            self.synthetic_items >= 2, "data.synthetic-items", self.synthetic_items, "must be >= 2"
        )
        check(
            self.partitioning in ("iid", "dirichlet", "user"),
            "data.partitioning",
            self.partitioning,
            "must be one of 'iid', 'dirichlet', 'user'",
        )
        check(self.num_sites >= 1, "data.num-sites", self.num_sites, "must be >= 1")
        check(
            self.dirichlet_alpha > 0, "data.dirichlet-alpha", self.dirichlet_alpha, "must be > 0"
        )


    @property
    def text_column_names(self) -> tuple[str, ...]:
        """`data.text-columns` as a tuple."""
        return tuple(c.strip() for c in self.text_columns.split(",") if c.strip())

    def generic_options(self) -> dict[str, str]:
        """The generic format's options (`common.data.loaders.GENERIC_DEFAULTS`) from these keys."""
        return {
            "interactions": self.interactions,
            "items": self.items,
            "user": self.user_column,
            "item": self.item_column,
            "timestamp": self.timestamp_column,
            "weight": self.weight_column,
            "item_id": self.item_id_column,
            "text": self.text_columns,
            "genres": self.genre_column,
        }
