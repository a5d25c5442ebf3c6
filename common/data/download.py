"""Where a data set's files are: data-dir resolution and checksum-verified download."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from common.data.interactions import DataError

ML_LATEST_SMALL_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
ML_LATEST_SMALL_SHA256 = {  # 2018 release
    "links.csv": "97ad18e4e56a09363c65676b6cb3482ce3e2cea2372a24620c1599c843325f31",
    "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
    "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
}
# The embedded default: data sets shipped inside the checkout (licence and SHA256SUMS beside).
EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "data"
EMBEDDED = ("ml-latest-small",)
REQUIRED_FILES = {
    "ml-latest-small": ("ratings.csv", "movies.csv"),
    "ml-100k": ("u.data", "u.item", "u.user"),
    "ml-1m": ("ratings.dat", "movies.dat", "users.dat"),
}


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` into the file ``dest`` (tests replace this function)."""
    with urllib.request.urlopen(url, timeout=120) as response, dest.open("wb") as out:  # noqa: S310
        shutil.copyfileobj(response, out)


def _download_ml_latest_small(target: Path) -> None:
    """Download, verify (SHA-256) and atomically move the ml-latest-small files into ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        archive = staging / "archive.zip"
        try:
            _fetch(ML_LATEST_SMALL_URL, archive)
        except (OSError, http.client.HTTPException) as err:
            raise DataError(
                f"could not download {ML_LATEST_SMALL_URL} ({err}); put the files in {target}"
            ) from None
        try:
            with zipfile.ZipFile(archive) as zf:
                for fname, expected in ML_LATEST_SMALL_SHA256.items():
                    payload = zf.read(f"ml-latest-small/{fname}")
                    digest = hashlib.sha256(payload).hexdigest()
                    if digest != expected:
                        raise DataError(f"{fname}: SHA-256 {digest} != pinned {expected}")
                    (staging / fname).write_bytes(payload)
        except (zipfile.BadZipFile, KeyError) as err:
            raise DataError(
                f"{ML_LATEST_SMALL_URL}: not a valid ml-latest-small archive ({err})"
            ) from None
        target.mkdir(exist_ok=True)
        for fname in ML_LATEST_SMALL_SHA256:
            os.replace(staging / fname, target / fname)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_DOWNLOADERS: dict[str, Callable[[Path], None]] = {"ml-latest-small": _download_ml_latest_small}


def embedded_dir(name: str) -> Path | None:
    """The checkout's own copy of data set ``name`` (``data/<name>``), or None.

    Looked up beside the code, then under the working directory (Flower runs an app's code
    from its installed copy, which holds no data files, with the checkout as working dir).
    """
    if name not in EMBEDDED:
        return None
    required = REQUIRED_FILES.get(name, ())
    for root in (EMBEDDED_DIR, Path.cwd() / "data"):
        if all((root / name / fname).is_file() for fname in required):
            return root / name
    return None


def resolve_data_dir(name: str, data_dir: str | os.PathLike[str] | None) -> Path:
    """Return the folder holding data set ``name``, downloading it if allowed.

    Order: explicit ``data_dir``; ``$FEDREC_DATA_DIR/<name>``; the embedded copy in the
    checkout (``data/ml-latest-small``, see :func:`embedded_dir`); the cache folder
    ``($XDG_CACHE_HOME or ~/.cache)/fedrec/<name>``. Only ml-latest-small is downloaded into
    the cache (checksums verified); other MovieLens licences forbid redistribution, so a
    missing cache raises :class:`DataError` saying where to put the files.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir)
    if env := os.environ.get("FEDREC_DATA_DIR"):
        return Path(env) / name
    if (embedded := embedded_dir(name)) is not None:
        return embedded
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedrec" / name
    required = REQUIRED_FILES.get(name, ())
    if all((cache / fname).is_file() for fname in required):
        return cache
    if name in _DOWNLOADERS:
        _DOWNLOADERS[name](cache)
        return cache
    raise DataError(
        f"{name}: {', '.join(required)} not found in {cache}. Its licence forbids redistribution: "
        f"download it from https://grouplens.org/datasets/movielens/ and put the files there, "
        f"or pass data_dir, or set FEDREC_DATA_DIR to a folder containing {name}/"
    )
