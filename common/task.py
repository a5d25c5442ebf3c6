"""Set-up shared by the central run and the Flower apps: data, split, catalogue, model, prior."""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.config.data import DataConfig
from common.config.model import ModelConfig
from common.config.run import RunConfig
from common.data.interactions import Interactions
from common.data.loaders import load_dataset
from common.data.new_items import read_new_items, resolve
from common.data.short_users import SetAside, set_aside_short_users
from common.data.split import Split, dominant_genre, leave_one_out, partition_users
from common.model.catalogue import Catalogue, build_catalogue
from common.model.new_items import set_new_items
from common.model.towers import RecModel
from common.model.train import LocalData
from common.privacy.accounting import test_only_zero_noise
from common.privacy.prior import user_histogram


def device() -> str:
    """CUDA when present, else CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Corpus:
    """A loaded data set and its leave-one-out split.

    ``data`` holds the users the split keeps (trained on, evaluated); ``all_data`` every user
    of the files, including those `set_aside` for having too few interactions for the split
    (`common.data.short_users`): the recommender answers for them too.
    """

    data: Interactions
    split: Split
    all_data: Interactions | None = None
    set_aside: SetAside | None = None
    listed_new: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def every_user(self) -> Interactions:
        """Every user of the data, set-aside ones included (what `fedrec recommend` serves)."""
        return self.data if self.all_data is None else self.all_data

    @property
    def new_items(self) -> np.ndarray:
        """Items the catalogue marks new: the split's cold items and `data.new-items-file`'s."""
        return np.union1d(self.split.cold_items, self.listed_new).astype(np.int64)

    def local(self, users: np.ndarray) -> LocalData:
        """The `LocalData` of the given global user indices."""
        users = np.asarray(users, dtype=np.int64)
        return LocalData(
            users,
            [self.split.train[u] for u in users],
            self.split.valid[users],
            self.split.test[users],
        )

    def everyone(self) -> LocalData:
        """All users (the central setting)."""
        return self.local(np.arange(self.data.n_users))


@functools.lru_cache(maxsize=4)
def load_corpus(cfg: DataConfig) -> Corpus:
    """Load and split the configured data set (cached per process).

    Users with fewer than ``max(cfg.min_interactions, 3)`` interactions are set aside (kept in
    ``all_data``, counted in ``set_aside``), not an error.
    """
    kwargs: dict[str, object] = {}
    if cfg.dataset == "synthetic":
        kwargs = {"n_users": cfg.synthetic_users, "n_items": cfg.synthetic_items}
    elif cfg.dataset == "generic":
        kwargs = dict(cfg.generic_options())
    full = load_dataset(cfg.dataset, cfg.dir or None, min_interactions=0, **kwargs)
    data, aside = set_aside_short_users(full, cfg.min_interactions)
    split = leave_one_out(data, cold_start_share=cfg.cold_start_share)
    listed = np.zeros(0, dtype=np.int64)
    if cfg.new_items_file:
        path = resolve(cfg.new_items_file, cfg.dir)
        listed = read_new_items(path, data.item_ids)
        _warn_listed_with_interactions(path, listed, split, data.item_ids)
    return Corpus(data, split, full, aside, listed)


def _warn_listed_with_interactions(
    path: Path, listed: np.ndarray, split: Split, item_ids: np.ndarray
) -> None:
    """Warn when items listed as new already have training interactions at this site.

    They are still scored by text (the list is the site's word), but their popularity
    evidence is then ignored, which is rarely what the operator meant.
    """
    if listed.size == 0 or not len(split.train):
        return
    seen = np.unique(np.concatenate([np.asarray(t, dtype=np.int64) for t in split.train]))
    used = np.intersect1d(listed, seen)
    if used.size:
        warnings.warn(
            f"data.new-items-file {path}: {used.size} of {listed.size} listed items already "
            f"have training interactions (e.g. item id {item_ids[used[0]]}); they are scored "
            "as new items (by text) and their popularity evidence is not used",
            stacklevel=3,
        )


def client_users(
    cfg: DataConfig, corpus: Corpus, partition_id: int, num_partitions: int, seed: int
) -> np.ndarray:
    """Global user indices of simulated client `partition_id` under `data.partitioning`."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} out of range [0, {num_partitions})")
    labels = None
    if cfg.partitioning == "dirichlet":
        labels = dominant_genre(corpus.data, corpus.split)
    parts = _partition(
        corpus.data.n_users,
        num_partitions,
        cfg.partitioning,
        seed,
        cfg.dirichlet_alpha,
        None if labels is None else tuple(labels.tolist()),
    )
    return parts[partition_id]


def heldout_users(n_users: int, share: float, seed: int) -> np.ndarray:
    """Sorted users kept out of every client's training (membership-inference non-members).

    ``round(share * n_users)`` users drawn without replacement from a generator seeded with
    `seed` (``audit.seed``), so the server-side audit knows them without any client telling.
    """
    k = int(round(share * n_users))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, 7])
    return np.sort(rng.choice(n_users, size=k, replace=False)).astype(np.int64)


@functools.lru_cache(maxsize=8)
def _partition(
    n_users: int, n_clients: int, mode: str, seed: int, alpha: float, labels: tuple[int, ...] | None
) -> list[np.ndarray]:
    lab = None if labels is None else np.asarray(labels)
    return partition_users(n_users, n_clients, mode=mode, seed=seed, alpha=alpha, labels=lab)


@functools.lru_cache(maxsize=2)
def load_catalogue(cfg: ModelConfig, texts: tuple[str, ...], n_layers: int) -> Catalogue:
    """Tokenised catalogue and frozen-backbone caches (disk cache shared across processes)."""
    return build_catalogue(
        list(texts),
        backbone=cfg.backbone,
        max_tokens=cfg.max_tokens,
        n_lower=n_layers - cfg.lora.layers,
        cache_lower=cfg.cache_lower_layers,
        cache_dir=cfg.cache_dir or None,
        device=device(),
    )


def setup(cfg: RunConfig) -> tuple[Corpus, Catalogue, RecModel]:
    """Corpus, catalogue and a fresh model for `cfg`."""
    corpus = load_corpus(cfg.data)
    model = RecModel(
        cfg.model, n_items=corpus.data.n_items, history_len=cfg.data.history_len, device=device()
    )
    set_new_items(model, corpus.new_items)
    n_layers = model.n_lower + cfg.model.lora.layers
    cat = load_catalogue(cfg.model, corpus.data.item_texts, n_layers)
    return corpus, cat, model


def local_histogram(
    local: LocalData, n_items: int, *, recent: int, sigma: float, seed: int
) -> np.ndarray:
    """This party's popularity histogram, with Gaussian noise ``sigma`` (sensitivity 1) if > 0.

    Each user's recent items form a unit-norm vector (`user_histogram`), so adding
    ``N(0, sigma^2)`` per item is the Gaussian mechanism at user level.
    """
    hist = user_histogram(local.train, n_items, recent=recent)
    if sigma > 0 and not test_only_zero_noise():
        hist = hist + np.random.default_rng(seed).normal(0.0, sigma, size=n_items)
    elif sigma < 0 or math.isnan(sigma):
        raise ValueError(f"histogram noise must be >= 0, got {sigma}")
    return hist


def set_prior(model: RecModel, hist: np.ndarray) -> None:
    """Install the (aggregated, possibly noisy) histogram as the model's popularity prior."""
    with torch.no_grad():
        model.prior.copy_(torch.from_numpy(np.asarray(hist, dtype=np.float32)).to(model.device))
