"""Synthetic implicit-feedback data with planted topic structure, for fast tests and sanity runs."""

from __future__ import annotations

import numpy as np

from common.data.interactions import Interactions, item_text

TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "Space": ("galaxy", "rocket", "orbit", "planet", "astronaut", "nebula"),
    "Ocean": ("reef", "whale", "tide", "sailor", "harbor", "coral"),
    "Cooking": ("recipe", "oven", "spice", "kitchen", "pastry", "chef"),
    "Sports": ("stadium", "goal", "referee", "trophy", "league", "sprint"),
    "Music": ("guitar", "melody", "concert", "drummer", "chorus", "violin"),
    "Crime": ("detective", "heist", "alibi", "suspect", "gangster", "verdict"),
    "Romance": ("wedding", "kiss", "lover", "heartbreak", "valentine", "courtship"),
    "Horror": ("ghost", "vampire", "haunted", "zombie", "curse", "crypt"),
    "War": ("soldier", "battle", "trench", "general", "siege", "regiment"),
    "Western": ("cowboy", "saloon", "sheriff", "ranch", "outlaw", "frontier"),
    "Fantasy": ("dragon", "wizard", "castle", "elf", "sorcery", "quest"),
    "Science": ("laboratory", "experiment", "molecule", "genome", "physics", "microscope"),
}
PREFERRED_SHARE = 0.85  # share of a user's interactions drawn from the preferred topics
POPULARITY_EXPONENT = 0.8  # Zipf exponent of the item popularity skew
WORDS_PER_TITLE = 3
FIRST_TIMESTAMP = 1_000_000_000


def _check(n_users: int, n_items: int, n_topics: int, history_len: tuple[int, int]) -> None:
    if n_users < 1:
        raise ValueError(f"`n_users` should be >= 1, got {n_users}.")
    if not 1 <= n_topics <= len(TOPIC_WORDS):
        raise ValueError(f"`n_topics` should be in [1, {len(TOPIC_WORDS)}], got {n_topics}.")
    if n_items < n_topics:
        raise ValueError(f"`n_items` should be >= n_topics={n_topics}, got {n_items}.")
    low, high = history_len
    if not 1 <= low <= high <= n_items:
        raise ValueError(
            f"`history_len` should satisfy 1 <= low <= high <= n_items, got {history_len}."
        )


def generate(
    n_users: int = 200,
    n_items: int = 300,
    n_topics: int = 8,
    history_len: tuple[int, int] = (8, 30),
    seed: int = 0,
) -> Interactions:
    """Generate users who mostly interact with items of their 1-2 preferred topics.

    Each item belongs to one topic; its title lists words of that topic and its single genre is
    the topic name, so the text reveals the topic. Each user prefers one or two topics and draws
    ``history_len`` distinct items (length uniform in the inclusive range) from the mixture
    ``PREFERRED_SHARE * pop(preferred items) + (1 - PREFERRED_SHARE) * pop(all items)``, where
    ``pop`` is a Zipf popularity skew. Timestamps strictly increase per user.

    Parameters
    ----------
    n_users, n_items, n_topics : int
        Sizes; ``n_topics`` is at most ``len(TOPIC_WORDS)``.
    history_len : tuple of int
        Inclusive range of interactions per user (at most ``n_items``).
    seed : int
        Seed of the generator; equal seeds give equal data.

    Returns
    -------
    Interactions
        ``name="synthetic"``, ids ``1..n``, ``user_attrs={"group": "A"/"B" per user}`` (random).
    """
    history_len = (int(history_len[0]), int(history_len[1]))
    _check(n_users, n_items, n_topics, history_len)
    rng = np.random.default_rng(seed)
    topic_names = list(TOPIC_WORDS)[:n_topics]
    item_topic = rng.permutation(np.arange(n_items) % n_topics)
    texts, genres = [], []
    for item in range(n_items):
        name = topic_names[item_topic[item]]
        words = rng.choice(TOPIC_WORDS[name], size=WORDS_PER_TITLE, replace=False)
        texts.append(item_text(f"Item {item + 1}: {' '.join(words)}", (name,)))
        genres.append((name,))
    popularity = 1.0 / (1.0 + rng.permutation(n_items)) ** POPULARITY_EXPONENT
    background = popularity / popularity.sum()

    users, items, timestamps = [], [], []
    for user in range(n_users):
        preferred = rng.choice(n_topics, size=min(int(rng.integers(1, 3)), n_topics), replace=False)
        mask = np.isin(item_topic, preferred)
        focused = np.where(mask, popularity, 0.0) / popularity[mask].sum()
        weights = PREFERRED_SHARE * focused + (1.0 - PREFERRED_SHARE) * background
        length = int(rng.integers(history_len[0], history_len[1] + 1))
        items.append(rng.choice(n_items, size=length, replace=False, p=weights / weights.sum()))
        start = FIRST_TIMESTAMP + int(rng.integers(0, 10_000_000))
        timestamps.append(start + np.cumsum(rng.integers(60, 86_400, size=length)))
        users.append(np.full(length, user))
    return Interactions(
        name="synthetic",
        item_ids=np.arange(1, n_items + 1, dtype=np.int64),
        item_texts=tuple(texts),
        item_genres=tuple(genres),
        user_ids=np.arange(1, n_users + 1, dtype=np.int64),
        users=np.concatenate(users).astype(np.int64),
        items=np.concatenate(items).astype(np.int64),
        timestamps=np.concatenate(timestamps).astype(np.int64),
        user_attrs={"group": rng.choice(np.array(["A", "B"]), size=n_users)},
    )
