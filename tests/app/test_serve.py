"""client.serve: the recommender over HTTP on loopback, behind a bearer token (urllib client)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.recommender import Recommender
from client.serve import main, make_server
from common.config.base import ConfigError
from common.config.run import RunConfig
from common.model.adapter import catalogue_digest, write_adapter
from common.task import load_corpus

from .test_recommend import trained_like

TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.fixture
def rec(cfg: RunConfig, tmp_path: Path, tiny_backbone: Path) -> Recommender:
    data = load_corpus(cfg.data).data
    folder = write_adapter(trained_like(cfg), tmp_path / "adapter", data=cfg.data,
                           catalogue=catalogue_digest(data.item_ids, data.item_texts))  # fmt: skip
    return Recommender.load(folder, cfg.data, backbone=str(tiny_backbone))


@pytest.fixture
def url(rec: Recommender) -> Iterator[str]:
    server = make_server(rec, TOKEN, "127.0.0.1", 0)  # a free port chosen by the OS
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _call(url: str, path: str, body: Any = None, token: str | None = TOKEN,
          raw: bytes | None = None) -> tuple[int, dict[str, Any]]:  # fmt: skip
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + path, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_recommendations_over_http_match_the_api(url: str, rec: Recommender) -> None:
    user = rec.user_ids()[2]
    want = [r.to_json() for r in rec.for_user(user, 4)]
    status, got = _call(url, "/recommend", {"user": user, "k": 4})
    assert status == 200 and got["recommendations"] == want
    status, got = _call(url, f"/recommend?user={user}&k=4")
    assert status == 200 and got["recommendations"] == want
    items = [rec.data.item_ids[i].item() for i in (3, 5, 8)]
    other = rec.data.item_ids[20].item()
    status, got = _call(url, "/recommend", {"history": items, "exclude": [other], "k": 3})
    assert status == 200
    assert got["recommendations"] == [
        r.to_json() for r in rec.for_history(items, 3, exclude=[other])
    ]
    assert {d["item"] for r in got["recommendations"] for d in r["because"]} <= set(items)
    assert not {r["item"] for r in got["recommendations"]} & {*items, other}
    status, health = _call(url, "/health")
    assert (status, health["users"], health["items"]) == (
        200,
        len(rec.user_ids()),
        rec.data.n_items,
    )


@pytest.mark.parametrize("token, why", [(None, "missing bearer token"), ("wrong", "wrong token"),
                                        (TOKEN[:-1], "wrong token")])  # fmt: skip
def test_missing_or_wrong_token_is_401(url: str, token: str | None, why: str) -> None:
    for path, body in (("/recommend", {"user": 1}), ("/health", None)):
        assert _call(url, path, body, token=token) == (401, {"error": why})


@pytest.mark.parametrize(
    "body, message",
    [
        ({"user": "nobody"}, "unknown user id 'nobody'"),
        ({"history": ["no-such-item"]}, "unknown item id(s) in history: ['no-such-item']"),
        ({"user": 1, "history": [1]}, "give exactly one of `user` or `history`"),
        ({}, "give exactly one of `user` or `history`"),
        ({"user": 1, "k": "ten"}, "`k` must be an integer, got 'ten'"),
        ({"user": 1, "k": 0}, "k must be in [1, "),
        ({"history": "1,2"}, "`history` must be a list of item ids"),
        ({"user": 1, "colour": "red"}, "unknown field(s) ['colour']"),
        ([1, 2], "the body must be a JSON object"),
    ],
)
def test_bad_requests_are_400_with_a_clear_message(url: str, body: Any, message: str) -> None:
    status, got = _call(url, "/recommend", body)
    assert status == 400 and message in got["error"]


def test_bad_json_and_unknown_paths(url: str) -> None:
    status, got = _call(url, "/recommend", raw=b"{not json")
    assert status == 400 and "not valid JSON" in got["error"]
    assert _call(url, "/nothing")[0] == 404


def test_no_short_or_missing_token(rec: Recommender, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    with pytest.raises(ConfigError, match="at least 16 characters"):
        make_server(rec, "short")
    monkeypatch.delenv("FEDREC_SERVE_TOKEN", raising=False)
    assert main(["--adapter", str(tmp_path), "--port", "0"]) == 2
    assert "no token: pass --token-file or set $FEDREC_SERVE_TOKEN" in capsys.readouterr().err
    assert main(["--adapter", str(tmp_path), "--token-file", str(tmp_path / "none")]) == 2
    assert "--token-file" in capsys.readouterr().err
