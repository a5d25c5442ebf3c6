"""`fedrec serve`: the recommender API as a small HTTP JSON endpoint behind a bearer token.

  GET  /health                          {"status": "ok", "users": N, "items": M}
  GET  /recommend?user=ID&k=10          top-k for a user id of the site's data
  POST /recommend  {"user": ID, "k": 10, "explain": 3}
  POST /recommend  {"history": [ID, ...], "exclude": [ID, ...], "k": 10}

Every request needs ``Authorization: Bearer <token>`` (else 401); a bad request gets 400 with
``{"error": "..."}``. The token comes from --token-file or $FEDREC_SERVE_TOKEN, never from the
command line. Listens on 127.0.0.1 unless --host says otherwise (put TLS in front for more).
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import sys
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from client.recommend import EXIT_BAD_INPUT, add_source, open_recommender
from client.recommender import Recommender, RequestError
from common.config.base import ConfigError
from common.data.interactions import DataError
from common.io import clean_json

TOKEN_ENV = "FEDREC_SERVE_TOKEN"
MAX_BODY = 1 << 20  # bytes of a request body
MIN_TOKEN = 16  # characters


class BadRequestError(ValueError):
    """A request the endpoint answers with 400 and this message."""


def answer(rec: Recommender, query: dict[str, Any]) -> dict[str, Any]:
    """The JSON reply to one recommend request (raises `BadRequestError` / `RequestError`)."""
    unknown = sorted(set(query) - {"user", "history", "exclude", "k", "explain"})
    if unknown:
        raise BadRequestError(f"unknown field(s) {unknown}")
    if ("user" in query) == ("history" in query):
        raise BadRequestError("give exactly one of `user` or `history`")
    k, explain = _int(query, "k", 10), _int(query, "explain", 3)
    if "user" in query:
        if "exclude" in query:
            raise BadRequestError(
                "`exclude` goes with `history` (a user's seen items are excluded)"
            )
        recs = rec.for_user(query["user"], k, explain=explain)
    else:
        history, exclude = _ids(query, "history"), _ids(query, "exclude")
        recs = rec.for_history(history, k, exclude=exclude, explain=explain)
    return {"user": query.get("user"), "recommendations": [r.to_json() for r in recs]}


def _int(query: dict[str, Any], key: str, default: int) -> int:
    value = query.get(key, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequestError(f"`{key}` must be an integer, got {value!r}")
    return value


def _ids(query: dict[str, Any], key: str) -> list[Any]:
    value = query.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise BadRequestError(f"`{key}` must be a list of item ids, got {value!r}")
    return value


def make_server(rec: Recommender, token: str, host: str = "127.0.0.1", port: int = 0
                ) -> ThreadingHTTPServer:  # fmt: skip
    """An HTTP server (not yet serving) answering with `rec`; port 0 = any free port."""
    if len(token) < MIN_TOKEN:
        raise ConfigError(f"the serve token must have at least {MIN_TOKEN} characters")
    lock = threading.Lock()  # one request at a time through the model
    expected = f"Bearer {token}".encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "fedrec"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            sys.stderr.write(f"[fedrec serve] {self.address_string()} {format % args}\n")

        def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            data = json.dumps(clean_json(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == HTTPStatus.UNAUTHORIZED:
                self.send_header("WWW-Authenticate", 'Bearer realm="fedrec"')
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            got = self.headers.get("Authorization", "").encode()
            if hmac.compare_digest(got, expected):
                return True
            why = "missing bearer token" if not got else "wrong token"
            self._send(HTTPStatus.UNAUTHORIZED, {"error": why})
            return False

        def _handle(self, query: dict[str, Any] | None) -> None:
            path = urlsplit(self.path).path
            try:
                if path == "/health" and query is None:
                    self._send(HTTPStatus.OK, {"status": "ok", "users": len(rec.user_ids()),
                                               "items": rec.data.n_items})  # fmt: skip
                elif path == "/recommend":
                    if query is None:
                        query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
                    with lock:
                        reply = answer(rec, query)
                    self._send(HTTPStatus.OK, reply)
                else:
                    self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {path!r}"})
            except (BadRequestError, RequestError) as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's handler name
            if self._authorised():
                self._handle(None)

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's handler name
            if not self._authorised():
                return
            try:
                query = _body(self)
            except BadRequestError as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
            self._handle(query)

    return ThreadingHTTPServer((host, port), Handler)


def _body(handler: BaseHTTPRequestHandler) -> dict[str, Any]:
    try:
        size = int(handler.headers.get("Content-Length", "0"))
    except ValueError:
        raise BadRequestError("bad Content-Length") from None
    if size > MAX_BODY:
        raise BadRequestError(f"request body over {MAX_BODY} bytes")
    raw = handler.rfile.read(size) if size > 0 else b""
    try:
        query = json.loads(raw or b"null")
    except ValueError as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(query, dict):
        raise BadRequestError('the body must be a JSON object, e.g. {"user": 1, "k": 10}')
    return query


def read_token(path: Path | None) -> str:
    """The token from `path` (first line, stripped) or $FEDREC_SERVE_TOKEN; an error if none."""
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file {path}: {exc.strerror or exc}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"no token: pass --token-file or set ${TOKEN_ENV}")
    return token


def parser() -> argparse.ArgumentParser:
    """The options of `fedrec serve` (= `python -m client.serve`)."""
    ap = argparse.ArgumentParser(prog="python -m client.serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_source(ap)
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    ap.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free)")
    ap.add_argument("--token-file", type=Path, default=None,
                    help=f"file holding the bearer token (else ${TOKEN_ENV})")  # fmt: skip
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run `fedrec serve` until interrupted; exit 2 with ``error: ...`` on bad input."""
    args = parser().parse_args(argv)
    try:
        token = read_token(args.token_file)
        server = make_server(open_recommender(args), token, args.host, args.port)
    except (ConfigError, DataError, RequestError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"serving recommendations on http://{args.host}:{server.server_port}/recommend",
          flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
