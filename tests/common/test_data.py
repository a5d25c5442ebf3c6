"""Tests of the MovieLens loaders, data-dir resolution, download and the synthetic generator."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from common.data import download as download
from common.data.download import resolve_data_dir
from common.data.loaders import DATASETS, DataError, item_text, load_dataset
from common.data.synthetic import TOPIC_WORDS, generate

REAL_DIR = Path(__file__).resolve().parents[2] / "data" / "ml-latest-small"  # embedded copy

FLAGS_TOY = "|".join("0001110000000000000")  # Animation, Children's, Comedy
FLAGS_EYE = "|".join("0110000000000000100")  # Action, Adventure, Thriller
FIXTURES: dict[str, dict[str, bytes]] = {
    "ml-latest-small": {
        "movies.csv": b"movieId,title,genres\n"
        b"1,Toy Story (1995),Adventure|Animation\n"
        b'2,"American President, The (1995)",Comedy|Drama|Romance\n'
        b"3,Unrated (2000),(no genres listed)\n"
        b"4,Never Rated (2001),Drama\n",
        "ratings.csv": b"userId,movieId,rating,timestamp\n"
        b"1,1,4.0,100\n1,2,3.5,90\n1,3,5.0,110\n"
        b"2,1,1.0,50\n2,3,2.0,60\n2,2,3.0,70\n",
    },
    "ml-100k": {
        "u.item": f"1|Toy Story (1995)|01-Jan-1995||http://x|{FLAGS_TOY}\n"
        f"2|GoldenEye (1995)|01-Jan-1995||http://x|{FLAGS_EYE}\n"
        f"3|Café Society (1995)|01-Jan-1995||http://x|{'|'.join('1' + '0' * 18)}\n".encode(
            "latin-1"
        ),
        "u.user": b"1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n",
        "u.data": b"1\t1\t5\t10\n1\t2\t3\t11\n1\t3\t4\t12\n2\t1\t4\t20\n2\t2\t1\t21\n"
        b"2\t3\t2\t22\n3\t3\t5\t30\n3\t1\t5\t31\n3\t2\t5\t32\n",
    },
    "ml-1m": {
        "movies.dat": "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Étoile (1989)::Drama\n3::Heat (1995)::Action|Crime|Thriller\n".encode("latin-1"),
        "users.dat": b"1::F::1::10::48067\n2::M::56::16::70072\n"
        b"3::M::25::15::55117\n4::F::45::7::02460\n",
        "ratings.dat": b"1::1::5::978300760\n1::2::3::978302109\n1::3::3::978301968\n"
        b"2::1::4::978300275\n2::2::5::978824291\n2::3::4::978302268\n"
        b"3::3::4::978302039\n3::1::5::978300719\n3::2::2::978302268\n"
        b"4::1::4::978300100\n4::2::3::978300200\n4::3::2::978300300\n",
    },
}


def write_fixture(root: Path, name: str, **overrides: bytes) -> Path:
    """Write the good fixture of data set ``name`` into ``root``, replacing some files."""
    root.mkdir(parents=True, exist_ok=True)
    for fname, content in (FIXTURES[name] | overrides).items():
        (root / fname).write_bytes(content)
    return root


# ---------------------------------------------------------------- good files


def test_ml_latest_small_fixture(tmp_path: Path) -> None:
    data = load_dataset("ml-latest-small", write_fixture(tmp_path, "ml-latest-small"))
    assert (data.n_users, data.n_items, len(data.users)) == (2, 4, 6)
    assert data.item_ids.tolist() == [1, 2, 3, 4]  # item 4 has no rating but is kept
    assert data.item_texts[1] == "American President, The (1995). Comedy, Drama, Romance"
    assert data.item_texts[2] == "Unrated (2000)" and data.item_genres[2] == ()
    assert data.users.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.items.tolist() == [0, 1, 2, 0, 2, 1]
    assert data.timestamps.tolist() == [100, 90, 110, 50, 60, 70]
    assert data.user_attrs == {}


def test_ml_100k_fixture(tmp_path: Path) -> None:
    data = load_dataset("ml-100k", write_fixture(tmp_path, "ml-100k"))
    assert (data.n_users, data.n_items, len(data.users)) == (3, 3, 9)
    assert data.item_texts[0] == "Toy Story (1995). Animation, Children's, Comedy"
    assert data.item_texts[2] == "Café Society (1995). unknown"
    assert data.item_genres[1] == ("Action", "Adventure", "Thriller")
    assert data.user_attrs["age"].tolist() == [24, 53, 23]
    assert data.user_attrs["gender"].tolist() == ["M", "F", "M"]
    assert data.user_attrs["occupation"].tolist() == ["technician", "other", "writer"]


def test_ml_1m_fixture(tmp_path: Path) -> None:
    data = load_dataset("ml-1m", write_fixture(tmp_path, "ml-1m"))
    assert (data.n_users, data.n_items, len(data.users)) == (4, 3, 12)
    assert data.item_texts[1] == "Étoile (1989). Drama"
    assert data.user_attrs["gender"].tolist() == ["F", "M", "M", "F"]
    assert data.user_attrs["age"].tolist() == [1, 56, 25, 45]
    assert data.user_attrs["occupation"].tolist() == [10, 16, 15, 7]


def test_min_interactions_zero_keeps_short_users(tmp_path: Path) -> None:
    ratings = FIXTURES["ml-latest-small"]["ratings.csv"] + b"3,1,4.0,5\n"
    root = write_fixture(tmp_path, "ml-latest-small", **{"ratings.csv": ratings})
    assert load_dataset("ml-latest-small", root, min_interactions=0).n_users == 3


def test_duplicate_pairs_are_kept(tmp_path: Path) -> None:
    ratings = FIXTURES["ml-latest-small"]["ratings.csv"] + b"1,1,2.0,200\n"
    root = write_fixture(tmp_path, "ml-latest-small", **{"ratings.csv": ratings})
    assert len(load_dataset("ml-latest-small", root).users) == 7


def test_item_text() -> None:
    assert (
        item_text("Toy Story (1995)", ["Animation", "Comedy"])
        == "Toy Story (1995). Animation, Comedy"
    )
    assert item_text("Untitled (2000)", ()) == "Untitled (2000)"


# ---------------------------------------------------------------- bad files

RH, MH = b"userId,movieId,rating,timestamp\n", b"movieId,title,genres\n"
ITEM_LINE = f"1|Toy Story (1995)|d||u|{FLAGS_TOY}\n".encode()
USERS_1M = FIXTURES["ml-1m"]["users.dat"]
BAD = [  # (file replaced, its content, "<file> line <n>" starting the error, fragment)
    ("ratings.csv", b"user,movieId,rating,timestamp\n1,1,4,1\n", "ratings.csv line 1", "userId"),
    ("ratings.csv", b"", "ratings.csv line 1", "header"),
    ("ratings.csv", RH, "ratings.csv line 2", "no data"),
    ("ratings.csv", RH + b"1,1,4,1\n1,2,4\n", "ratings.csv line 3", "expected 4 fields, got 3"),
    ("ratings.csv", RH + b"1,abc,4,1\n", "ratings.csv line 2", "movieId 'abc'"),
    ("ratings.csv", RH + b"1,1,4,1\n1,2,x,2\n", "ratings.csv line 3", "rating 'x'"),
    ("ratings.csv", RH + b"1,1,4,1\n1,1,nan,2\n", "ratings.csv line 3", "rating 'nan'"),
    ("ratings.csv", RH + b"1,1,4,1\n1,1,4,1.5\n", "ratings.csv line 3", "timestamp '1.5'"),
    ("ratings.csv", RH + b"1,1,4,1\n1,99,4,1\n", "ratings.csv line 3", "item id 99 is not in"),
    ("ratings.csv", RH + b"\n1,1,4,1\n7,1,4,1\n", "ratings.csv line 3", "user 1 has 1 inter"),
    ("ratings.csv", RH + b'1,1,4,"1\n', "ratings.csv line 2", "unexpected end of data"),
    ("movies.csv", MH + b"1,A (1990),Drama\n1,B (1991),Drama\n", "movies.csv line 3", "on line 2"),
    ("movies.csv", MH + b"1,A (1990),Drama\n2,B\xff (1991),Drama\n", "movies.csv line 3", "utf-8"),
    ("movies.csv", b"movieId,name,genres\n1,A (1990),Drama\n", "movies.csv line 1", "'title'"),
    ("u.data", b"1\t1\t5\t10\n1\t2\t3\n", "u.data line 2", "fields"),
    ("u.data", b"1\t1\t5\t10\n\x1c1\t2\t3\t1\n", "u.data line 2", "user id '\\x1c1'"),
    ("u.data", b"1\t1\t5\t10\n1\t2\t3\t99999999999999999999\n", "u.data line 2", "timestamp"),
    ("u.data", b"1\t1\t5\t10\n9\t2\t3\t11\n", "u.data line 2", "user id 9 is not in u.user"),
    (
        "u.item",
        ITEM_LINE + ITEM_LINE.replace(b"1|", b"2|", 1)[:-2] + b"2\n",
        "u.item line 2",
        "flags",
    ),
    ("u.item", ITEM_LINE * 2, "u.item line 2", "item id 1 already defined on line 1"),
    ("u.user", b"1|24|M|technician|85711\n2|old|F|other|94043\n", "u.user line 2", "age 'old'"),
    ("u.user", b"1|24|M|t|1\n2|53|F|o|2\n3|23|M|w|3\n3|2|M|w|3\n", "u.user line 4", "user id 3"),
    ("ratings.dat", b"1::1::5::978300760\n1::7::5::978300760\n", "ratings.dat line 2", "item id 7"),
    (
        "movies.dat",
        b"1::Toy Story (1995)::Animation\n2::Broken (1995)\n",
        "movies.dat line 2",
        "fields",
    ),
    ("users.dat", USERS_1M.rsplit(b"4::", 1)[0], "ratings.dat line 10", "user id 4 is not in"),
    ("users.dat", USERS_1M + b"5::F::1::10::1\n", "users.dat line 5", "user 5 has 0 interactions"),
]
DATASET_OF = {fname: name for name, files in FIXTURES.items() for fname in files}


@pytest.mark.parametrize(("fname", "content", "where", "fragment"), BAD)
def test_bad_file_names_file_and_line(
    tmp_path: Path, fname: str, content: bytes, where: str, fragment: str
) -> None:
    name = DATASET_OF[fname]
    root = write_fixture(tmp_path, name, **{fname: content})
    with pytest.raises(DataError) as info:
        load_dataset(name, root)
    message = str(info.value)
    assert message.startswith(f"{where}:"), message
    assert fragment in message


@pytest.mark.parametrize("name", ["ml-latest-small", "ml-100k", "ml-1m"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    root = write_fixture(tmp_path, name)
    missing = sorted(FIXTURES[name])[0]
    (root / missing).unlink()
    with pytest.raises(DataError, match=f"{missing}: file not found"):
        load_dataset(name, root)


def test_unknown_name_and_options() -> None:
    with pytest.raises(ValueError, match="ml-latest-small"):
        load_dataset("netflix")
    with pytest.raises(ValueError, match="n_users"):
        load_dataset("ml-1m", "/nonexistent", n_users=3)
    with pytest.raises(ValueError, match="min_interactions"):
        load_dataset("synthetic", min_interactions=-1)


# ---------------------------------------------------------------- resolution and download


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDREC_DATA_DIR", raising=False)
    monkeypatch.setattr(download, "EMBEDDED", ())  # these tests are about the cache and download
    return tmp_path / "cache" / "fedrec"


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for fname, content in files.items():
            zf.writestr(f"ml-latest-small/{fname}", content)
    return path


def fake_fetch(archive: Path, calls: list[str]):  # type: ignore[no-untyped-def]
    def fetch(url: str, dest: Path) -> None:
        calls.append(url)
        shutil.copyfile(archive, dest)

    return fetch


def test_resolve_order(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_data_dir("ml-1m", tmp_path / "x") == tmp_path / "x"
    with pytest.raises(DataError, match="licence"):
        resolve_data_dir("ml-1m", None)
    write_fixture(cache / "ml-1m", "ml-1m")
    assert resolve_data_dir("ml-1m", None) == cache / "ml-1m"
    monkeypatch.setenv("FEDREC_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir("ml-1m", None) == tmp_path / "env" / "ml-1m"


def test_download_verifies_and_installs(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = FIXTURES["ml-latest-small"] | {"links.csv": b"movieId,imdbId,tmdbId\n1,1,1\n"}
    sums = {fname: hashlib.sha256(content).hexdigest() for fname, content in files.items()}
    monkeypatch.setattr(download, "ML_LATEST_SMALL_SHA256", sums)
    calls: list[str] = []
    monkeypatch.setattr(download, "_fetch", fake_fetch(make_zip(tmp_path / "a.zip", files), calls))
    data = load_dataset("ml-latest-small")
    assert data.n_users == 2 and calls == [download.ML_LATEST_SMALL_URL]
    assert sorted(p.name for p in cache.iterdir()) == ["ml-latest-small"]
    assert sorted(p.name for p in (cache / "ml-latest-small").iterdir()) == sorted(files)
    load_dataset("ml-latest-small")
    assert len(calls) == 1  # cached


def test_download_checksum_mismatch_leaves_nothing(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = FIXTURES["ml-latest-small"] | {"links.csv": b"movieId,imdbId,tmdbId\n"}
    monkeypatch.setattr(download, "_fetch", fake_fetch(make_zip(tmp_path / "a.zip", files), []))
    with pytest.raises(DataError, match="links.csv: SHA-256"):
        load_dataset("ml-latest-small")
    assert list(cache.iterdir()) == []


def test_download_network_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, dest: Path) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(download, "_fetch", offline)
    with pytest.raises(DataError, match="could not download"):
        load_dataset("ml-latest-small")
    assert list(cache.iterdir()) == []


@pytest.mark.slow
def test_real_ml_latest_small() -> None:
    data = load_dataset("ml-latest-small", REAL_DIR)
    assert (data.n_users, data.n_items, len(data.users)) == (610, 9742, 100836)
    toy = int(np.searchsorted(data.item_ids, 1))
    assert (
        data.item_texts[toy] == "Toy Story (1995). Adventure, Animation, Children, Comedy, Fantasy"
    )
    assert np.all(np.diff(data.item_ids) > 0) and np.all(np.diff(data.user_ids) > 0)


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic() -> None:
    a, b, c = generate(seed=3), load_dataset("synthetic", seed=3), generate(seed=4)
    for key in ("users", "items", "timestamps", "item_ids", "user_ids"):
        assert np.array_equal(getattr(a, key), getattr(b, key))
    assert a.item_texts == b.item_texts and np.array_equal(
        a.user_attrs["group"], b.user_attrs["group"]
    )
    assert not np.array_equal(a.items, c.items)
    assert "synthetic" in DATASETS


def test_synthetic_plants_topics() -> None:
    data = generate(n_users=100, n_items=200, n_topics=8, seed=0)
    topics = list(TOPIC_WORDS)[:8]
    item_topic = np.array([topics.index(g[0]) for g in data.item_genres])
    for text, genres in zip(data.item_texts, data.item_genres, strict=True):
        assert text.endswith(f". {genres[0]}")
        assert all(
            word in TOPIC_WORDS[genres[0]] for word in text.split(":")[1].split(".")[0].split()
        )
    shares = []
    for user in range(data.n_users):
        counts = np.bincount(item_topic[data.items[data.users == user]], minlength=8)
        shares.append(np.sort(counts)[-2:].sum() / counts.sum())
        assert np.all(np.diff(data.timestamps[data.users == user]) > 0)
    assert np.mean(shares) > 0.8  # ~85% planted, vs 25% for two random topics of eight
    assert set(data.user_attrs["group"]) == {"A", "B"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_users": 0}, "n_users"),
        ({"n_topics": 99}, "n_topics"),
        ({"history_len": (5, 2)}, "history_len"),
    ],
)
def test_synthetic_rejects_bad_sizes(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        generate(**kwargs)  # type: ignore[arg-type]
