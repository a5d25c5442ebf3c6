"""The interaction-data types every loader shares: `Interactions`, `DataError`, `item_text`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """Bad or missing input data; the message names the file and the 1-based line."""


@dataclass(frozen=True, eq=False)
class Interactions:
    """Implicit-feedback interactions with public item text.

    ``users``/``items`` hold indices into ``user_ids``/``item_ids`` (both sorted ascending);
    rows are kept in file order and duplicate (user, item) pairs (re-ratings) are kept.
    ``user_attrs`` arrays are aligned with ``user_ids``. Ids are int64 when every id of that
    kind is an integer, else strings. ``weights`` (one per interaction, or None) is the data
    set's optional weight column (MovieLens: the rating); training treats every interaction
    as one implicit signal, so it does not change the model.
    """

    name: str
    item_ids: np.ndarray
    item_texts: tuple[str, ...]
    item_genres: tuple[tuple[str, ...], ...]
    user_ids: np.ndarray
    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    user_attrs: dict[str, np.ndarray] = field(default_factory=dict)
    weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, expected = len(self.users), {"item_texts": self.n_items, "item_genres": self.n_items}
        if self.weights is not None:
            expected["weights"] = n
        for key, size in ({"items": n, "timestamps": n} | expected).items():
            if len(getattr(self, key)) != size:
                raise ValueError(
                    f"{self.name}: `{key}` has {len(getattr(self, key))} entries, not {size}"
                )
        for key, values in self.user_attrs.items():
            if len(values) != self.n_users:
                raise ValueError(f"{self.name}: user_attrs[{key!r}] has {len(values)} entries")
        for key, index, size in (
            ("users", self.users, self.n_users),
            ("items", self.items, self.n_items),
        ):
            if len(index) and (index.min() < 0 or index.max() >= size):
                raise ValueError(f"{self.name}: `{key}` index out of range [0, {size})")

    @property
    def n_users(self) -> int:
        """Number of users."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """Number of catalogue items (including items without interactions)."""
        return len(self.item_ids)


def item_text(title: str, genres: Sequence[str]) -> str:
    """Return the public text of an item: ``"Title (year). Genre, Genre"`` or the title alone."""
    return f"{title}. {', '.join(genres)}" if genres else title
