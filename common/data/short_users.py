"""Users with too few interactions for the split: set aside from training, kept for `recommend`.

The chronological leave-one-out split holds out each user's last two items, so a user needs
at least `SPLIT_MINIMUM` interactions (and a site may ask for more with
``data.min-interactions``). Such users are not an error: they are part of the site's data, so
`fedrec recommend` / `fedrec serve` answer for them from their history, but they are left out
of training, evaluation and the popularity prior (nothing about them leaves the site). The
count is reported, never silent: `SetAside.summary` is printed by ``client.check_data`` and
logged when a site loads its data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.data.interactions import DataError, Interactions

SPLIT_MINIMUM = 3  # leave-one-out: >= 1 training item, the validation item, the test item
SHOWN = 5  # user ids named in the summary


@dataclass(frozen=True, eq=False)
class SetAside:
    """The users left out of training and evaluation, and why.

    ``threshold`` is the interaction count a user needs (``max(data.min-interactions, 3)``);
    ``user_ids`` / ``counts`` are the users below it (sorted by id) and their counts.
    """

    threshold: int
    min_interactions: int
    user_ids: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def reason(self) -> str:
        """Why these users are set aside."""
        if self.min_interactions > SPLIT_MINIMUM:
            return f"fewer than {self.min_interactions} interactions, the min-interactions setting"
        return (
            f"fewer than {SPLIT_MINIMUM} interactions, the leave-one-out split's minimum: "
            "1 to train on, 1 to validate, 1 to test"
        )

    def summary(self) -> str:
        """One line for the site's operator; empty when no user is set aside."""
        if not len(self):
            return ""
        shown = ", ".join(
            f"{u.item() if hasattr(u, 'item') else u} ({int(c)})"
            for u, c in zip(self.user_ids[:SHOWN], self.counts[:SHOWN], strict=True)
        )
        more = f", ... ({len(self) - SHOWN} more)" if len(self) > SHOWN else ""
        return (
            f"{len(self)} user(s) set aside ({self.reason}): not trained on or evaluated, "
            f"still served by fedrec recommend/serve; user (interactions): {shown}{more}"
        )


def set_aside_short_users(
    data: Interactions, min_interactions: int
) -> tuple[Interactions, SetAside]:
    """(``data`` without the users below the threshold, those users).

    Returns ``data`` itself when no user is below it; a `DataError` when every user is.
    """
    threshold = max(min_interactions, SPLIT_MINIMUM)
    counts = np.bincount(data.users, minlength=data.n_users)
    keep = counts >= threshold
    aside = SetAside(threshold, min_interactions, data.user_ids[~keep], counts[~keep])
    if keep.all():
        return data, aside
    if not keep.any():
        raise DataError(
            f"{data.name}: no user has {threshold} or more interactions ({aside.reason}); "
            f"all {data.n_users} users would be set aside"
        )
    return keep_users(data, keep), aside


def keep_users(data: Interactions, keep: np.ndarray) -> Interactions:
    """``data`` restricted to the users where the boolean mask ``keep`` is true (same items)."""
    new_index = np.cumsum(keep) - 1
    rows = keep[data.users]
    return Interactions(
        name=data.name,
        item_ids=data.item_ids,
        item_texts=data.item_texts,
        item_genres=data.item_genres,
        user_ids=data.user_ids[keep],
        users=new_index[data.users[rows]].astype(np.int64),
        items=data.items[rows],
        timestamps=data.timestamps[rows],
        user_attrs={k: v[keep] for k, v in data.user_attrs.items()},
        weights=None if data.weights is None else data.weights[rows],
    )
