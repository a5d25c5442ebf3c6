"""Users with fewer interactions than the split needs: set aside (counted, named), not an error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.check_data import main as check_data
from common.config.parse import parse_config
from common.data.interactions import DataError, Interactions
from common.data.short_users import SPLIT_MINIMUM, keep_users, set_aside_short_users
from common.task import load_corpus

ITEMS = "sku,title\na-1,Red mug\nb-7,Blue kettle\nc-3,Green teapot\nd-4,Tea cosy\n"
ROWS = (
    "user,item,timestamp,weight\n"
    "alice,a-1,1,1\nalice,b-7,2,1\nalice,c-3,3,2\n"
    "zoe,d-4,4,1\n"  # 1 interaction
    "bob,c-3,5,1\nbob,a-1,6,1\nbob,b-7,7,1\nbob,d-4,8,3\n"
    "carol,a-1,9,1\ncarol,d-4,10,1\n"  # 2 interactions
)


def folder(tmp_path: Path, rows: str = ROWS) -> Path:
    (tmp_path / "interactions.csv").write_text(rows)
    (tmp_path / "items.csv").write_text(ITEMS)
    return tmp_path


def config(tmp_path: Path, **over: object) -> dict[str, object]:
    return {"data.dataset": "generic", "data.dir": str(folder(tmp_path)),
            "data.item-id-column": "sku", **over}  # fmt: skip


def test_short_users_are_set_aside_counted_and_kept_for_recommendations(tmp_path: Path) -> None:
    corpus = load_corpus(parse_config(config(tmp_path)).data)
    assert corpus.data.user_ids.tolist() == ["alice", "bob"]  # trained and evaluated
    assert len(corpus.split.train) == 2 and corpus.split.test.tolist() == [2, 3]  # c-3, d-4
    assert corpus.every_user.user_ids.tolist() == ["alice", "bob", "carol", "zoe"]
    aside = corpus.set_aside
    assert aside is not None and aside.threshold == SPLIT_MINIMUM
    assert aside.user_ids.tolist() == ["carol", "zoe"] and aside.counts.tolist() == [2, 1]
    line = aside.summary()
    assert line.startswith("2 user(s) set aside (fewer than 3 interactions, the leave-one-out")
    assert "carol (2), zoe (1)" in line and "fedrec recommend" in line


def test_min_interactions_zero_no_longer_breaks_the_split(tmp_path: Path) -> None:
    # before: "pass 0 to keep such users", then the split failed with "leave-one-out needs >= 3"
    corpus = load_corpus(parse_config(config(tmp_path, **{"data.min-interactions": 0})).data)
    assert corpus.data.n_users == 2 and corpus.every_user.n_users == 4


def test_a_higher_min_interactions_names_the_setting(tmp_path: Path) -> None:
    corpus = load_corpus(parse_config(config(tmp_path, **{"data.min-interactions": 4})).data)
    assert corpus.data.user_ids.tolist() == ["bob"]
    assert corpus.set_aside is not None
    assert "fewer than 4 interactions, the min-interactions setting" in corpus.set_aside.summary()
    with pytest.raises(DataError, match="no user has 5 or more interactions"):
        load_corpus(parse_config(config(tmp_path, **{"data.min-interactions": 5})).data)


def test_no_short_user_changes_nothing(tmp_path: Path) -> None:
    rows = "".join(line + "\n" for line in ROWS.splitlines() if not line.startswith(("z", "c")))
    (tmp_path / "d").mkdir()
    cfg = parse_config({**config(tmp_path), "data.dir": str(folder(tmp_path / "d", rows))})
    corpus = load_corpus(cfg.data)
    assert corpus.every_user is corpus.data and corpus.set_aside is not None
    assert len(corpus.set_aside) == 0 and corpus.set_aside.summary() == ""


def test_keep_users_reindexes_rows_weights_and_attributes() -> None:
    data = Interactions(
        name="t", item_ids=np.arange(2), item_texts=("x", "y"), item_genres=((), ()),
        user_ids=np.array([10, 20, 30]), users=np.array([2, 0, 1, 2, 1]),
        items=np.array([0, 1, 0, 1, 1]), timestamps=np.arange(5),
        user_attrs={"age": np.array([1, 2, 3])}, weights=np.array([.1, .2, .3, .4, .5]),
    )  # fmt: skip
    out = keep_users(data, np.array([False, True, True]))
    assert out.user_ids.tolist() == [20, 30] and out.users.tolist() == [1, 0, 1, 0]
    assert out.items.tolist() == [0, 0, 1, 1] and out.timestamps.tolist() == [0, 2, 3, 4]
    assert out.weights is not None and out.weights.tolist() == [0.1, 0.3, 0.4, 0.5]
    assert out.user_attrs["age"].tolist() == [2, 3]
    with pytest.raises(DataError, match="all 3 users would be set aside"):
        set_aside_short_users(data, 0)  # every user has fewer than 3


def test_check_data_says_how_many_users_are_set_aside_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = f'site-name="shop" data-dir="{folder(tmp_path)}" dataset="generic" item-id-column="sku"'
    assert check_data(["--node-config", node]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("4 users (2 trained and evaluated), 4 items, 10 interactions: ok")
    assert err[1].startswith("site shop: 2 user(s) set aside (fewer than 3 interactions")
    assert check_data(["--node-config", node + " min-interactions=9"]) == 2
    assert "error: generic: no user has 9 or more interactions" in capsys.readouterr().err
