"""The generic data format (CSV, Parquet, string ids, weights), its errors, the embedded default."""

from __future__ import annotations

import csv
import hashlib
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.site import get_site, node_setup
from common.config.base import ConfigError
from common.config.data import DATASET_NAMES, NODE_DATA_KEYS
from common.config.parse import parse_config
from common.data.download import ML_LATEST_SMALL_SHA256, resolve_data_dir
from common.data.loaders import DATASETS, DataError, item_text, load_dataset
from common.data.tables import read_checksums
from common.task import load_corpus
from simulations.federated import with_data_dir

EMBEDDED = Path(__file__).resolve().parents[2] / "data" / "ml-latest-small"
ITEMS = (
    "sku,title,category,blurb\n"
    "b-7,Blue kettle,kitchen|tea,\n"
    'a-1,"Red mug, large",kitchen,Holds 400 ml\n'
    "c-3,Green teapot,tea,\n"
)
INTERACTIONS = (
    "user,item,timestamp,weight\n"
    "alice,a-1,100,1.0\n"
    "alice,b-7,90,2.5\n"
    "alice,c-3,2024-01-02T10:00:00,1\n"
    "bob,c-3,50,1\n"
    "bob,a-1,60.5,0.5\n"
    "bob,b-7,70,1\n"
)
OPTIONS = {"item_id": "sku", "text": "title,blurb,category", "genres": "category"}


def write(root: Path, interactions: str = INTERACTIONS, items: str = ITEMS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "interactions.csv").write_text(interactions)
    (root / "items.csv").write_text(items)
    return root


# ---------------------------------------------------------------- good files


def test_csv_with_string_ids_weights_and_text_columns(tmp_path: Path) -> None:
    data = load_dataset("generic", write(tmp_path), **OPTIONS)
    assert data.item_ids.tolist() == ["a-1", "b-7", "c-3"]  # sorted; strings kept as strings
    assert data.user_ids.tolist() == ["alice", "bob"]
    assert data.item_texts == (
        "Red mug, large. Holds 400 ml, kitchen",
        "Blue kettle. kitchen, tea",
        "Green teapot. tea",
    )
    assert data.item_genres == (("kitchen",), ("kitchen", "tea"), ("tea",))
    assert data.users.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.items.tolist() == [0, 1, 2, 2, 0, 1]
    assert data.weights is not None and data.weights.tolist() == [1.0, 2.5, 1, 1, 0.5, 1]
    iso = 1704189600.0  # 2024-01-02T10:00:00 UTC
    assert data.timestamps.dtype == np.float64
    assert data.timestamps.tolist() == [100, 90, iso, 50, 60.5, 70]


def test_weight_is_optional_and_integer_ids_become_integers(tmp_path: Path) -> None:
    rows = "user,item,timestamp\n10,2,1\n10,10,2\n10,3,3\n9,2,4\n9,3,5\n9,10,6\n"
    items = "item,title\n10,Ten\n2,Two\n3,Three\n"
    data = load_dataset("generic", write(tmp_path, rows, items))
    assert data.weights is None
    assert data.item_ids.dtype == np.int64 and data.item_ids.tolist() == [2, 3, 10]  # numeric
    assert data.user_ids.tolist() == [9, 10] and data.timestamps.dtype == np.int64
    assert data.item_texts == ("Two", "Three", "Ten")


def test_weight_column_off_and_renamed_columns(tmp_path: Path) -> None:
    rows = "who,what,when,weight\nu,x,1,oops\nu,y,2,1\nu,x,3,1\n"
    write(tmp_path, rows, "what,name\nx,X\ny,Y\n")
    opts = {"user": "who", "item": "what", "timestamp": "when", "text": "name", "weight": ""}
    data = load_dataset("generic", tmp_path, **opts)
    assert data.weights is None and data.n_items == 2  # the bad weight is never read


def test_parquet_loads_the_same_arrays_as_csv(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    folder = write(tmp_path / "pq")
    from_csv = load_dataset("generic", folder, **OPTIONS)
    for stem in ("interactions", "items"):
        with open(folder / f"{stem}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        columns = {k: [r[k] for r in rows] for k in rows[0]}
        if stem == "interactions":  # typed columns, as a real Parquet export has them
            columns["weight"] = [float(w) for w in columns["weight"]]
        pq.write_table(pa.table(columns), folder / f"{stem}.parquet")
        (folder / f"{stem}.csv").unlink()
    from_parquet = load_dataset("generic", folder, **OPTIONS)
    for key in ("item_ids", "user_ids", "users", "items", "timestamps", "weights"):
        assert np.array_equal(getattr(from_csv, key), getattr(from_parquet, key)), key
    assert from_csv.item_texts == from_parquet.item_texts


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    folder = write(tmp_path)
    table = pa.table({"user": ["u", "u", "u"], "item": ["a-1", "b-7", "a-1"],
                      "timestamp": [1.0, None, 3.0]})  # fmt: skip
    pq.write_table(table, folder / "events.parquet")
    with pytest.raises(DataError) as info:
        load_dataset("generic", folder, interactions="events.parquet", **OPTIONS)
    assert str(info.value).startswith("events.parquet row 2: timestamp '' is not a number")


# ---------------------------------------------------------------- bad files

IH = "user,item,timestamp,weight\n"
AT, IT = "interactions.csv line", "items.csv line"
BAD = [  # (interactions, items, error start, fragment)
    (IH + "u,a-1,1,1\nu,b-7,abc,1\n", ITEMS, f"{AT} 3", "timestamp 'abc' is not a number"),
    (IH + "u,a-1,1,1\n,b-7,2,1\n", ITEMS, f"{AT} 3", "user is empty"),
    (IH + "u,a-1,1,1\nu, ,2,1\n", ITEMS, f"{AT} 3", "item is empty"),
    (IH + "u,a-1,1,x\n", ITEMS, f"{AT} 2", "weight 'x' is not a finite number"),
    (IH + "u,a-1,1,inf\n", ITEMS, f"{AT} 2", "weight 'inf'"),
    (IH + "u,a-1,1,1\nu,zz,2,1\n", ITEMS, f"{AT} 3", "item id zz is not in items.csv"),
    (IH + "u,a-1,1,1\nu,b-7,2\n", ITEMS, f"{AT} 3", "expected 4 fields, got 3"),
    ("user,item,weight\nu,a-1,1\n", ITEMS, f"{AT} 1", "lacks column(s) ['timestamp']"),
    (IH, ITEMS, f"{AT} 2", "no data rows"),
    (IH + "u,a-1,1,1\nu,a-1,2,1\nv,a-1,3,1\nu,c-3,4,1\n", ITEMS, f"{AT} 4", "user v has 1"),
    (INTERACTIONS, ITEMS + "a-1,Again,x,\n", f"{IT} 5", "item id a-1 already defined on line 3"),
    (INTERACTIONS, ITEMS + "d-4,,,\n", f"{IT} 5", "item d-4 has no text"),
    (INTERACTIONS, "sku,name\na-1,A\n", f"{IT} 1", "lacks column(s) ['title'"),
    (INTERACTIONS, ITEMS + '"d-4,x\n', f"{IT} 5", "unexpected end of data"),
]  # fmt: skip


@pytest.mark.parametrize(("rows", "items", "where", "fragment"), BAD)
def test_each_error_names_file_and_line(
    tmp_path: Path, rows: str, items: str, where: str, fragment: str
) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("generic", write(tmp_path, rows, items), **OPTIONS)
    message = str(info.value)
    assert message.startswith(f"{where}:"), message
    assert fragment in message, message


def test_missing_files_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="items.csv: file not found"):
        load_dataset("generic", tmp_path)
    (tmp_path / "items.csv").write_text(ITEMS)
    with pytest.raises(DataError, match="interactions.csv: file not found"):
        load_dataset("generic", tmp_path, **OPTIONS)
    with pytest.raises(DataError, match="no data folder: set data.dir"):
        load_dataset("generic", None)


def test_loading_writes_nothing(tmp_path: Path) -> None:
    folder = write(tmp_path, IH + "u,a-1,1,1\nu,b-7,abc,1\n")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(DataError):
        load_dataset("generic", folder, **OPTIONS)
    load_dataset("generic", write(tmp_path), **OPTIONS)
    assert sorted(p.name for p in folder.iterdir()) == before


# ---------------------------------------------------------------- config and node config


def test_unknown_dataset_is_a_parse_time_error() -> None:
    with pytest.raises(ConfigError, match="`data.dataset` must be one of"):
        parse_config({"data.dataset": "netflix"})
    assert set(DATASET_NAMES) == set(DATASETS)


def test_unknown_dataset_in_node_config_fails_before_any_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("data loaded before the config was checked")

    monkeypatch.setattr("common.task.load_dataset", no_load)
    with pytest.raises(ConfigError, match=r"data.dataset.*node config sets \['dataset'"):
        node_setup({}, {"dataset": "netflix", "data-dir": "/x"})


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"data.text-columns": " , "}, "data.text-columns"),
        ({"data.user-column": ""}, "data.user-column"),
    ],
)
def test_bad_column_keys(over: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_config(over)


def test_min_interactions_and_columns_come_from_the_node_config(tmp_path: Path) -> None:
    folder = write(tmp_path, INTERACTIONS + "carol,a-1,5,1\ncarol,b-7,6,1\n")
    node = {"dataset": "generic", "data-dir": str(folder), "item-id-column": "sku",
            "text-columns": "title,category", "genre-column": "category"}  # fmt: skip
    run = {"data.min-interactions": 3}
    cfg, _, users = node_setup(run, node)
    assert users is None and cfg.data.min_interactions == 3 and cfg.data.item_id_column == "sku"
    corpus = load_corpus(cfg.data)  # carol (2 interactions) is set aside, not an error
    assert corpus.data.user_ids.tolist() == ["alice", "bob"]
    assert corpus.every_user.user_ids.tolist() == ["alice", "bob", "carol"]
    assert corpus.set_aside is not None and corpus.set_aside.user_ids.tolist() == ["carol"]
    with pytest.raises(DataError, match="user carol has 2 interactions"):  # the loader alone
        load_dataset("generic", folder, min_interactions=3, **cfg.data.generic_options())
    cfg, _, _ = node_setup(run, {**node, "min-interactions": 2})  # the site's own threshold
    assert cfg.data.min_interactions == 2
    data = load_dataset("generic", folder, min_interactions=2, **cfg.data.generic_options())
    assert data.user_ids.tolist() == ["alice", "bob", "carol"]
    assert data.item_texts[0] == "Red mug, large. kitchen"
    assert set(NODE_DATA_KEYS.values()) <= set(parse_config({}).flat())


def test_a_site_starts_on_its_own_generic_data(tmp_path: Path, make_cfg: Any) -> None:
    folder = write(tmp_path)
    run = {k: v for k, v in make_cfg().flat().items() if not k.startswith("data.")}
    node = {"dataset": "generic", "data-dir": str(folder), "item-id-column": "sku",
            "text-columns": "title", "site-name": "shop",
            "ledger-path": str(tmp_path / "l.json")}  # fmt: skip
    site = get_site(run, node)
    assert site.corpus.data.n_items == 3 and len(site.local) == 2


# ---------------------------------------------------------------- embedded default


def test_embedded_copy_is_the_default_and_its_sums_are_the_pinned_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FEDREC_DATA_DIR", raising=False)
    assert resolve_data_dir("ml-latest-small", None) == EMBEDDED
    assert resolve_data_dir("ml-latest-small", "") == EMBEDDED
    sums = read_checksums(EMBEDDED / "SHA256SUMS")
    assert {k: sums[k] for k in ML_LATEST_SMALL_SHA256} == ML_LATEST_SMALL_SHA256
    for fname, digest in sums.items():
        assert hashlib.sha256((EMBEDDED / fname).read_bytes()).hexdigest() == digest, fname
    assert "redistribute" in (EMBEDDED / "README.txt").read_text()


def test_environment_variable_wins_over_the_embedded_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDREC_DATA_DIR", str(tmp_path))
    assert resolve_data_dir("ml-latest-small", None) == tmp_path / "ml-latest-small"


def test_the_wrapper_passes_an_absolute_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDREC_DATA_DIR", raising=False)
    over = with_data_dir({}, parse_config({}))
    assert over["data.dir"] == str(EMBEDDED)
    rel = with_data_dir({"data.dir": "data/x"}, parse_config({"data.dir": "data/x"}))
    assert Path(rel["data.dir"]).is_absolute()


def test_checksum_refuses_a_modified_file(tmp_path: Path) -> None:
    copy = Path(shutil.copytree(EMBEDDED, tmp_path / "ml-latest-small"))
    (copy / "ratings.csv").chmod(0o644)
    with open(copy / "ratings.csv", "ab") as fh:
        fh.write(b"1,1,5.0,964982703\n")
    with pytest.raises(DataError, match=r"^ratings.csv: SHA-256 [0-9a-f]{64} does not match"):
        load_dataset("ml-latest-small", copy)
    (copy / "SHA256SUMS").write_text("not a sum line\n")
    with pytest.raises(DataError, match="SHA256SUMS line 1"):
        load_dataset("ml-latest-small", copy)


# ---------------------------------------------------------------- MovieLens through the same path


def reference_ml_latest_small(root: Path) -> dict[str, Any]:
    """The old loader's semantics, re-implemented plainly (csv module, sorted integer ids)."""
    with open(root / "movies.csv", newline="", encoding="utf-8") as fh:
        movies = {int(r["movieId"]): r for r in csv.DictReader(fh)}
    with open(root / "ratings.csv", newline="", encoding="utf-8") as fh:
        ratings = list(csv.DictReader(fh))
    item_ids = sorted(movies)
    genres = [
        () if movies[i]["genres"] == "(no genres listed)" else tuple(movies[i]["genres"].split("|"))
        for i in item_ids
    ]
    users = np.array([int(r["userId"]) for r in ratings])
    user_ids, user_index = np.unique(users, return_inverse=True)
    return {
        "item_ids": np.array(item_ids),
        "item_texts": tuple(
            item_text(movies[i]["title"].strip(), g) for i, g in zip(item_ids, genres, strict=True)
        ),
        "item_genres": tuple(genres),
        "user_ids": user_ids,
        "users": user_index,
        "items": np.searchsorted(item_ids, [int(r["movieId"]) for r in ratings]),
        "timestamps": np.array([int(r["timestamp"]) for r in ratings]),
    }


@pytest.mark.slow
def test_movielens_layout_reproduces_the_reference_and_the_generic_mapping() -> None:
    data = load_dataset("ml-latest-small", EMBEDDED)
    for key, expected in reference_ml_latest_small(EMBEDDED).items():
        got = getattr(data, key)
        if isinstance(expected, np.ndarray):
            assert got.dtype == np.int64 and np.array_equal(got, expected), key
        else:
            assert got == expected, key
    generic = load_dataset(
        "generic", EMBEDDED, interactions="ratings.csv", items="movies.csv", user="userId",
        item="movieId", weight="rating", text="title,genres", genres="genres",
    )  # fmt: skip
    for key in ("item_ids", "user_ids", "users", "items", "timestamps", "weights"):
        assert np.array_equal(getattr(data, key), getattr(generic, key)), key
    # Only MovieLens's placeholder "(no genres listed)" differs: the layout reads it as none.
    differ = [i for i, (a, b) in enumerate(zip(data.item_texts, generic.item_texts, strict=True))
              if a != b]  # fmt: skip
    assert differ and all(generic.item_genres[i] == ("(no genres listed)",) for i in differ)
    assert all(generic.item_texts[i] == f"{data.item_texts[i]}. (no genres listed)" for i in differ)


# ---------------------------------------------------------------- checked before the node starts


def test_check_data_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from client.check_data import main

    folder = write(tmp_path, IH + "u,a-1,1,1\nu,b-7,abc,1\n")
    node = f'data-dir="{folder}" dataset="generic" item-id-column="sku" text-columns="title"'
    assert main(["--node-config", node]) == 2
    assert "error: interactions.csv line 3: timestamp 'abc'" in capsys.readouterr().err
    write(tmp_path)
    assert main(["--node-config", node]) == 0
    assert "2 users, 3 items, 6 interactions: ok" in capsys.readouterr().err
    assert main(["--node-config", 'dataset="netflix"']) == 2
    assert "`data.dataset` must be one of" in capsys.readouterr().err


@pytest.mark.slow
def test_supernode_script_refuses_bad_data_before_starting(tmp_path: Path) -> None:
    import os
    import subprocess

    root = Path(__file__).resolve().parents[2]
    folder = write(tmp_path / "shop", IH + "u,a-1,1,1\nu,zz,2,1\n")
    (tmp_path / "key").write_text("not used: the data check fails first")
    (tmp_path / "ca.crt").write_text("not used")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "CA_CERT": str(tmp_path / "ca.crt"), "DATASET": "generic",
           "EXTRA_NODE_CONFIG": 'item-id-column="sku" text-columns="title"',
           "LEDGER_PATH": str(tmp_path / "ledger.json"),
           "FLWR_HOME": str(tmp_path / "flwr")}  # fmt: skip
    script = root / "scripts" / "deploy" / "supernode.sh"
    proc = subprocess.run(
        ["bash", str(script), "shop", str(folder), str(tmp_path / "key")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: interactions.csv line 3: item id zz is not in items.csv" in proc.stderr
    assert "supernode shop:" not in proc.stderr  # flower-supernode never started


def test_check_data_refuses_unknown_node_keys_with_the_closest_known_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from client.check_data import main
    from client.node import node_keys

    folder = write(tmp_path)
    node = f'data-dir="{folder}" dataset="generic" item-id-column="sku" max-epsilom=1'
    assert main(["--node-config", node]) == 2  # the ClientApp would ignore it: budget 10
    assert "unknown node-config key(s) 'max-epsilom' (did you mean 'max-epsilon'?)" in (
        capsys.readouterr().err
    )
    assert {"site-name", "ledger-path", "adapter-dir", "max-epsilon", "label"} <= set(node_keys())


def test_a_missing_column_names_the_keys_that_choose_the_columns(tmp_path: Path) -> None:
    folder = write(tmp_path)  # items.csv has no `item` column: item-id-column is needed
    with pytest.raises(DataError, match=r"lacks column\(s\) \['item'\]; .*item-id-column=\"item\""):
        load_dataset("generic", folder)
