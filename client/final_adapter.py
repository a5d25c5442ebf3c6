"""The final global adapter a site keeps at the end of a run: where it goes, how it is written."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from client.site import Site
from common.model.adapter import catalogue_digest, write_adapter
from common.model.towers import load_trainable_state
from common.privacy.ledger import site_ledger_dir

log = logging.getLogger("flwr.fedrec")


def final_adapter_dir(site: Site) -> Path:
    """Node config `adapter-dir`, else ``<site-name>.final-adapter`` beside the site's ledger.

    Without a ledger file (no local DP and no `ledger-path`), beside where it would be:
    `dp.ledger-dir`, else ``<fed.out-dir>/ledgers``.
    """
    if site.adapter_dir is not None:
        return site.adapter_dir
    root = site.ledger_path.parent if site.ledger_path is not None else site_ledger_dir(site.cfg)
    return root / f"{site.name}.final-adapter"


def keep_final_adapter(
    site: Site, state: dict[str, np.ndarray], *, run_key: str, server_round: int
) -> Path:
    """Write the received final state as a portable adapter folder (atomically); its path.

    The folder records the site's data settings (no paths) and catalogue digest, so
    `fedrec recommend --adapter <it> --data-dir <the site's data>` needs nothing else.
    """
    load_trainable_state(site.model, state)  # checks names and shapes against the model
    data = site.corpus.data
    folder = write_adapter(
        site.model,
        final_adapter_dir(site),
        data=site.cfg.data,
        catalogue=catalogue_digest(data.item_ids, data.item_texts),
        extra={"run_key": run_key, "round": server_round, "site": site.name},
    )
    log.info("[fedrec] %s: final adapter of round %d kept in %s", site.name, server_round, folder)
    return folder
