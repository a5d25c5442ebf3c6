"""Deployment on loopback: docs/deploy.md's walk-through, run as written (TLS + SuperNode auth).

The fixture runs the command blocks that docs/deploy.md marks ``<!-- walkthrough:NAME -->``
(certificates, node keys, SuperLink, CLI connection, registration, SuperNodes, tiny backbone,
run config, run) with ``HOME`` set to a temporary folder, so every ``~`` path of the doc lands
there; only the doc's host names and ports are replaced by loopback and free ports, and the
site blocks run once as written (site-a) and once for site-b. Each site holds half of a small
synthetic data set written in the ml-latest-small format, with one shared catalogue.

The refusal and fault tests add SuperNodes through `scripts/deploy/supernode.sh` directly,
with ``dataset="synthetic"`` (which ignores ``data-dir``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from simulations.procs import alive, descendants, free_ports

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "deploy"
DOC = REPO / "docs" / "deploy.md"
CONNECTION = "fedrec"  # the doc's connection name
BOOT_TIMEOUT = 90.0
RUN_TIMEOUT = 600.0  # a loaded 2-core machine took 293 s for the doc's one-round dry run
REFUSAL_TIMEOUT = 45.0
SITE_USERS, ITEMS = 30, 80  # per site; one shared catalogue


def walkthrough_blocks(doc: Path = DOC) -> dict[str, str]:
    """The fenced blocks that `doc` marks ``<!-- walkthrough:NAME -->``, by name."""
    found = re.findall(r"<!-- walkthrough:([\w-]+) -->\n```\w*\n(.*?)\n```", doc.read_text(), re.S)
    blocks = dict(found)
    assert len(blocks) == len(found), f"a walkthrough block name repeats in {doc}"
    return blocks


def substitute(block: str, pairs: dict[str, str], *, strict: bool = True) -> str:
    """`block` with each key of `pairs` replaced (in order); `strict`: every key must occur."""
    for old, new in pairs.items():
        assert old in block or not strict, f"{old!r} not in the walkthrough block:\n{block}"
        block = block.replace(old, new)
    return block


def write_site_data(home: Path, sites: tuple[str, ...], generic: tuple[str, ...] = ()) -> None:
    """`~/SITE/data`: disjoint users, the same items; ml-latest-small format, or the generic one.

    Sites in `generic` get ``interactions.csv`` (user, item, timestamp) and ``items.csv`` (item,
    title, genres) instead of ``ratings.csv`` / ``movies.csv``: the same catalogue text under
    ``text-columns = "title,genres"``, ``genre-column = "genres"`` (see `GENERIC_NODE_CONFIG`).
    """
    from common.data.synthetic import generate

    data = generate(n_users=SITE_USERS * len(sites), n_items=ITEMS, seed=0)
    for s, site in enumerate(sites):
        folder = home / site / "data"
        folder.mkdir(parents=True, exist_ok=True)
        gen = site in generic
        items_file, ratings_file = ("items.csv", "interactions.csv") if gen else (
            "movies.csv", "ratings.csv")  # fmt: skip
        with open(folder / items_file, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["item" if gen else "movieId", "title", "genres"])
            for iid, text, genres in zip(
                data.item_ids, data.item_texts, data.item_genres, strict=True
            ):
                out.writerow([int(iid), text.rsplit(". ", 1)[0], "|".join(genres)])
        with open(folder / ratings_file, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["user", "item", "timestamp"] if gen else
                         ["userId", "movieId", "rating", "timestamp"])  # fmt: skip
            mine = (data.users >= s * SITE_USERS) & (data.users < (s + 1) * SITE_USERS)
            rows = zip(data.users[mine], data.items[mine], data.timestamps[mine], strict=True)
            for u, i, t in rows:
                uid, iid = int(data.user_ids[u]), int(data.item_ids[i])
                out.writerow([f"user-{uid}", iid, int(t)] if gen else [uid, iid, 4.0, int(t)])


@dataclass
class Proc:
    """A process this test started, with its combined stdout/stderr log."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    handle: IO[bytes]

    def text(self) -> str:
        self.handle.flush()
        return self.log.read_text(errors="replace")


@dataclass
class Deployment:
    """The running federation and everything the checks need."""

    root: Path
    home: Path  # $HOME of every process: the doc's `~`
    certs: Path
    keys: Path
    port: int
    env: dict[str, str]
    loopback: dict[str, str] = field(default_factory=dict)  # the doc's names -> loopback
    procs: list[Proc] = field(default_factory=list)
    node_ids: dict[str, int] = field(default_factory=dict)
    cli_logs: list[Path] = field(default_factory=list)

    # ------------------------------------------------------------------ processes
    def start(self, name: str, cmd: list[str], home: Path | None, extra: dict[str, str]) -> Proc:
        """Start `cmd` in its own session; `home`: its FLWR_HOME (None: the command sets it)."""
        log = self.root / "logs" / f"{name}.log"
        handle = log.open("wb")
        env = {**self.env, **extra}
        if home is not None:
            home.mkdir(parents=True, exist_ok=True)
            env["FLWR_HOME"] = str(home)
        popen = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        proc = Proc(name, popen, log, handle)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """SIGTERM every started process (and, failing that, SIGKILL), then its descendants."""
        kids: set[int] = set()
        for proc in self.procs:
            kids |= descendants(proc.popen.pid)
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)  # the scripts exec Flower: its own pid
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout=10)
            proc.handle.close()
        # Flower's SuperExec/ServerApp/ClientApp children watch their parent and exit with it;
        # give them a moment, then kill any that did not (by pid: only our own descendants).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(p) for p in kids):
            time.sleep(0.2)
        for pid in kids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    # ------------------------------------------------------------------ the doc's blocks
    def block(self, block: str, **over: str) -> str:
        """A walkthrough block on loopback: the doc's names and ports, then `over`, replaced."""
        return substitute(substitute(block, self.loopback, strict=False), over)

    def sh(self, name: str, script: str, timeout: float = 120.0) -> str:
        """Run a (substituted) walkthrough block with bash in the checkout; return its output."""
        res = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        log = self.root / "logs" / f"cli-{len(self.cli_logs):02d}-{name}.log"
        log.write_text(f"$ {script}\n{res.stdout}\n{res.stderr}")
        self.cli_logs.append(log)
        tail = res.stdout[-4000:] + res.stderr[-4000:]
        assert res.returncode == 0, f"walkthrough block {name} failed:\n{script}\n{tail}"
        return res.stdout

    # ------------------------------------------------------------------ CLI
    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a `flwr` CLI command with the operator's FLWR_HOME (~/.flwr: the connection)."""
        env = {**self.env, "FLWR_HOME": str(self.home / ".flwr")}
        res = subprocess.run(
            [str(Path(sys.executable).parent / "flwr"), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        log = self.root / "logs" / f"cli-{len(self.cli_logs):02d}-{args[0]}.log"
        log.write_text(f"$ flwr {' '.join(args)}\n{res.stdout}\n{res.stderr}")
        self.cli_logs.append(log)
        return res

    def cli_json(self, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        res = self.cli(*args, "--format", "json", timeout=timeout)
        start = res.stdout.find("{")
        assert start >= 0, f"no JSON from flwr {args}: {res.stdout}\n{res.stderr}"
        return json.loads(res.stdout[start:])

    def register(self, name: str) -> int:
        out = self.cli_json("supernode", "register", str(self.keys / f"{name}.pub"), CONNECTION)
        assert out.get("success"), out
        return int(out["node-id"])

    def nodes(self) -> dict[int, str]:
        out = self.cli_json("supernode", "ls", CONNECTION)
        return {int(n["node-id"]): n["status"] for n in out.get("nodes", [])}

    def supernode(self, name: str, port: int, *, key: str | None = None, **extra: str) -> Proc:
        env = {
            "SUPERLINK": f"127.0.0.1:{self.port}",
            "CA_CERT": str(self.certs / "ca.crt"),
            "DATASET": "synthetic",
            **extra,
        }
        cmd = [
            "bash",
            str(SCRIPTS / "supernode.sh"),
            name,
            str(self.root / "data" / name),  # ignored by "synthetic"; shows the per-site flag
            str(self.keys / (key or name)),
            str(port),
        ]
        return self.start(name, cmd, self.root / "homes" / name, env)

    def all_logs(self) -> dict[str, str]:
        logs = {p.name: p.text() for p in self.procs}
        logs.update({p.name: p.read_text(errors="replace") for p in self.cli_logs})
        return logs


def _wait(cond: Any, timeout: float, what: str, *procs: Proc) -> Any:
    """Poll `cond` until truthy; fail early if one of `procs` exits, with its log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        for proc in procs:
            if proc.popen.poll() is not None:
                pytest.fail(
                    f"{proc.name} exited ({proc.popen.returncode}) waiting for {what}:\n"
                    f"{proc.text()[-4000:]}"
                )
        time.sleep(0.5)
    tails = "".join(f"\n--- {p.name}:\n{p.text()[-3000:]}" for p in procs)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{tails}")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


SITES = ("site-a", "site-b")
# site-b brings its own data in the generic format (string user ids), as docs/deploy.md's
# "Your own data" describes; supernode.sh checks it (client.check_data) before the node starts.
GENERIC_NODE_CONFIG = (
    "export DATASET=generic EXTRA_NODE_CONFIG='text-columns=\"title,genres\" "
    "genre-column=\"genres\"'; "
)


def _bring_up(dep: Deployment, doc: dict[str, str]) -> None:
    """Steps 1-5 of the walk-through: PKI, node keys, SuperLink, connection, keys, SuperNodes."""
    dep.sh("certs", dep.block(doc["certs"]))
    for site in SITES:
        dep.sh(f"node-key-{site}", dep.block(doc["node-key"], **{"site-a": site}))
    # Keys for the refusal and fault tests (not in the doc).
    subprocess.run(
        ["bash", str(SCRIPTS / "make_node_keys.sh"), str(dep.keys), "intruder", "plaintext",
         "site-c"],
        check=True, capture_output=True, env=dep.env,
    )  # fmt: skip
    link = dep.start("superlink", ["bash", "-c", dep.block(doc["superlink"])], None, {})
    _wait(
        lambda: "Application startup complete" in link.text() and _port_open(dep.port),
        BOOT_TIMEOUT,
        "the SuperLink",
        link,
    )
    dep.sh("connect", dep.block(doc["connect"]))
    incoming = dep.home / "incoming"  # the sites send their .pub files to the operator
    incoming.mkdir()
    for site in SITES:
        shutil.copy(dep.keys / f"{site}.pub", incoming / f"{site}.pub")
    printed = dep.sh("register", dep.block(doc["register"]))
    # flwr 1.42's `supernode ls` does not show `--name`: the ids come from the register lines.
    ids = [int(i) for i in re.findall(r"SuperNode (\d+) registered successfully", printed)]
    assert len(ids) == len(SITES) and set(dep.nodes()) == set(ids), printed
    dep.node_ids.update(zip(SITES, ids, strict=True))
    write_site_data(dep.home, SITES, generic=("site-b",))
    pa, pb = free_ports(2)
    # site-a runs the doc's block as written; site-b leaves its ledger to the run config's
    # dp.ledger-dir (the fallback the doc describes), so both ledger rules are exercised.
    sites = [
        dep.start("site-a", ["bash", "-c", dep.block(doc["supernode"], **{"9094": str(pa)})],
                  None, {}),
        dep.start("site-b", ["bash", "-c", GENERIC_NODE_CONFIG + dep.block(
            doc["supernode"],
            **{"LEDGER_PATH=~/site-a/privacy-ledger.json": 'LEDGER_PATH=""', "site-a": "site-b",
               "9094": str(pb)},
        )], None, {}),
    ]  # fmt: skip
    want = set(dep.node_ids.values())
    _wait(
        lambda: all(dep.nodes().get(n) == "online" for n in want),
        BOOT_TIMEOUT,
        "both registered SuperNodes online",
        link,
        *sites,
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("deploy")
    home = root / "home"
    home.mkdir()
    (root / "logs").mkdir()
    link_port, local_http, local_control = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
    env.update(
        {
            "HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            # Should a bare `flwr ls` ever start Flower's local SuperLink, it gets ports of
            # its own (never another session's 39091/39093).
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(local_http),
            "FLWR_LOCAL_CONTROL_API_PORT": str(local_control),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    dep = Deployment(root, home, home / "fedrec-pki", home / "fedrec-keys", link_port, env)
    dep.loopback = {
        "superlink.example.org:9093": f"127.0.0.1:{link_port}",
        "0.0.0.0": "127.0.0.1",
        "9093": str(link_port),
    }
    try:
        _bring_up(dep, walkthrough_blocks())
        yield dep
    finally:
        dep.stop_all()


def test_unregistered_key_is_refused(deployment: Deployment) -> None:
    port, *_ = free_ports(1)
    before = deployment.nodes()
    proc = deployment.supernode("intruder", port, LEDGER_PATH="", MAX_RETRIES="2")
    proc.popen.wait(timeout=REFUSAL_TIMEOUT)
    log = proc.text()
    assert proc.popen.returncode != 0, log
    # Observed with flwr 1.41.0: the Fleet API answers 412 and the SuperNode exits (code 305).
    assert "Failed to activate SuperNode" in log, log
    assert "[code: 2004]" in log, log
    link_log = deployment.procs[0].text()
    assert "No SuperNode found with the given public key" in link_log
    assert deployment.nodes() == before  # nobody new joined


def _plaintext_supernode(deployment: Deployment, name: str, *extra: str) -> Proc:
    port, *_ = free_ports(1)
    cmd = [
        str(Path(sys.executable).parent / "flower-supernode"),
        "--insecure",
        "--superlink",
        f"127.0.0.1:{deployment.port}",
        "--port",
        str(port),
        "--max-retries",
        "2",
        "--node-config",
        f'site-name="{name}" dataset="synthetic"',
        *extra,
    ]
    proc = deployment.start(name, cmd, deployment.root / "homes" / name, {})
    proc.popen.wait(timeout=REFUSAL_TIMEOUT)
    return proc


def test_plaintext_supernode_is_refused(deployment: Deployment) -> None:
    before = deployment.nodes()
    # Without a key: the TLS SuperLink drops the plaintext HTTP request (observed, flwr 1.41.0).
    proc = _plaintext_supernode(deployment, "plaintext")
    log = proc.text()
    assert proc.popen.returncode != 0, log
    assert "Failed to initialize the connection to the SuperLink" in log, log
    # The refusal reads either way (observed, flwr 1.41.0, same set-up, different runs).
    assert any(
        why in log
        for why in ("Server disconnected without sending a response", "Connection reset by peer")
    ), log
    # With a key: flower-supernode itself refuses to authenticate over plaintext (exit 303).
    key = str(deployment.keys / "plaintext")
    proc = _plaintext_supernode(deployment, "plaintext-key", "--auth-supernode-private-key", key)
    log = proc.text()
    assert proc.popen.returncode != 0, log
    assert "Node authentication can only be used when TLS is enabled" in log, log
    assert deployment.nodes() == before  # nobody new joined


def _run_config(tmp_path: Path, over: dict[str, Any]) -> Path:
    """A run-config file: two sites' synthetic data, a tiny backbone, out in `tmp_path/out`."""
    from common.model.backbone import make_tiny_backbone
    from simulations.federated import toml_value as _toml

    base: dict[str, Any] = {
        "data.dataset": "synthetic",
        "data.synthetic-users": 60,
        "data.synthetic-items": 80,
        "model.backbone": str(make_tiny_backbone(tmp_path / "tinybert")),
        "model.cache-dir": str(tmp_path / "cache"),
        "fed.min-clients": 2,
        "fed.out-dir": str(tmp_path / "out"),
    }
    path = tmp_path / "run.toml"
    path.write_text("".join(f'"{k}" = {_toml(v)}\n' for k, v in {**base, **over}.items()))
    return path


def test_one_round_over_tls(deployment: Deployment) -> None:
    """Steps 6-8 of the walk-through: tiny backbone, the dry-run config, `flwr run`, `flwr ls`."""
    dep, doc = deployment, walkthrough_blocks()
    home = dep.home
    printed = dep.sh("tiny-backbone", dep.block(doc["tiny-backbone"]), timeout=300)
    assert printed.strip().splitlines()[-1] == str(home / "fedrec-tiny-bert")
    dep.sh("run-config", dep.block(doc["run-config"]))
    out, ledgers = home / "fedrec-runs" / "dry-run", home / "ledgers"
    with open(home / "dry-run.toml", "a") as fh:  # site-b (no ledger-path) keeps it here
        fh.write(f'"dp.ledger-dir" = "{ledgers}"\n')
    dep.sh("run", dep.block(doc["run"]), timeout=RUN_TIMEOUT)
    # `--stream` can exit 0 although the run failed: the SuperLink's record decides.
    runs = deployment.cli_json("ls", CONNECTION)["runs"]
    assert len(runs) == 1, runs
    assert runs[0]["status"] == "finished:completed", (runs, dep.cli_logs[-1].read_text()[-4000:])
    # SET_DEFAULT=1 made the connection the default: a bare `flwr ls` lists the same run
    # (and starts no local SuperLink).
    bare = deployment.cli_json("ls")["runs"]
    assert [r["run-id"] for r in bare] == [runs[0]["run-id"]]
    assert not (home / ".flwr" / "local-superlink").exists()

    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["privacy"]["mode"] == "local"
    nodes = {str(n) for n in deployment.node_ids.values()}
    assert set(results["privacy"]["per_client_epsilon"]) == nodes
    # Each site keeps its own ledger: site-a where its node config says, site-b (no
    # ledger-path) under the run config's dp.ledger-dir.
    assert (home / "site-a" / "privacy-ledger.json").is_file()
    assert (ledgers / "site-b.json").is_file()
    assert not (ledgers / "site-a.json").exists()
    # The reply files docs/deploy.md lists, beside site-a's ledger: one per release.
    kinds = sorted(p.name.split(".round-")[1] for p in (home / "site-a").glob("*.round-*.npz"))
    assert kinds == ["0-eval-test.npz", "0-prior.npz", "1-eval-test.npz", "1-train.npz"], kinds
    # site-b trained on its own data in the generic format, checked before its node started.
    site_b_log = (dep.root / "logs" / "site-b.log").read_text()
    assert "site site-b: generic data in" in site_b_log and ": ok" in site_b_log, site_b_log[-2000:]


def test_run_config_file_and_pairs_do_not_combine(deployment: Deployment) -> None:
    """What docs/deploy.md says of `--run-config` (flwr 1.42): one file, or pairs, never both."""
    res = deployment.cli("run", ".", CONNECTION, "--run-config", str(deployment.home / "x.toml"),
                         "--run-config", "fed.rounds=2")  # fmt: skip
    assert res.returncode != 0
    assert "TOML files cannot be passed alongside key-value pairs." in res.stdout + res.stderr
    from flwr.common.config import parse_config_args

    assert parse_config_args(["fed.rounds=2 dp.epsilon=3", "fed.rounds=4"]) == {
        "fed.rounds": 4, "dp.epsilon": 3}  # fmt: skip
    # A file and pairs in one string: the file is silently dropped (the doc warns).
    assert parse_config_args(["run.toml fed.rounds=2"]) == {"fed.rounds": 2}


def _secret_lines(path: Path) -> set[str]:
    """The body lines of a PEM / OpenSSH file (long enough not to match by chance)."""
    return {
        line.strip()
        for line in path.read_text().splitlines()
        if len(line.strip()) >= 24 and not line.startswith("-----")
    }


def _public_key_lines(pub: Path) -> set[str]:
    """An OpenSSH public key's base64 blob and the lines of its PEM (SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_public_key(pub.read_bytes())
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return {pub.read_text().split()[1]} | {
        line for line in pem.splitlines() if not line.startswith("-----")
    }


def test_no_key_or_certificate_in_logs(deployment: Deployment) -> None:
    certs, keys = deployment.certs, deployment.keys
    secrets: dict[str, set[str]] = {
        f.name: _secret_lines(f)
        for f in [certs / "ca.key", certs / "server.key", certs / "ca.crt", certs / "server.pem"]
    }
    for name in ("site-a", "site-b", "intruder", "plaintext"):
        secrets[name] = _secret_lines(keys / name)
    # Public keys of the accepted sites (and of the never-sent "plaintext" key) must not be
    # logged either. Flower 1.41's SuperLink DOES log the PEM public key of a *refused*
    # SuperNode ("Attempted to register SuperNode with public key: ..."), so the intruder's
    # public key is deliberately not checked: it is public
    # material of a rejected party, not a secret.
    for name in ("site-a", "site-b", "plaintext"):
        secrets[f"{name}.pub"] = _public_key_lines(keys / f"{name}.pub")
    logs = deployment.all_logs()
    assert len(logs) >= 6 and all(logs.values())
    leaks = [
        (source, log_name)
        for log_name, text in logs.items()
        for source, lines in secrets.items()
        if any(line in text for line in lines)
    ]
    assert not leaks, f"key/certificate material in logs: {leaks}"


def test_a_supernode_killed_mid_round_does_not_stop_the_run(
    deployment: Deployment, tmp_path: Path
) -> None:
    """SIGKILL a third site's SuperNode (and its ClientApp) while it trains round 1.

    Runs last in this module: it adds site-c to the federation. With fed.min-clients = 2 the
    round must complete with the two live sites (when the SuperLink reports the node gone,
    or at fed.round-timeout at the latest), name the dead node, and the run must go on.
    """
    dep = deployment
    dep.node_ids["site-c"] = dep.register("site-c")
    ledger = dep.root / "site-c" / "ledger.json"
    port, *_ = free_ports(1)
    victim = dep.supernode("site-c", port, LEDGER_PATH=str(ledger))
    _wait(lambda: dep.nodes().get(dep.node_ids["site-c"]) == "online", BOOT_TIMEOUT,
          "site-c online", victim)  # fmt: skip
    out = tmp_path / "out"
    run_config = _run_config(
        tmp_path,
        {
            "train.epochs": 30.0,  # seconds of training: room to kill mid-round
            # A deployed site refuses dp.mode = "none". This run is on synthetic data, so site-a
            # spends a ledger of its own beside its pinned one (one ledger per data set); a
            # small epsilon keeps it well inside the default max-epsilon 10 either way.
            "dp.epsilon": 1.0,
            "fed.rounds": 2,
            # The live sites train 30 epochs: on a loaded 2-core machine that took over 90 s.
            "fed.round-timeout": 240.0,
            "dp.ledger-dir": str(tmp_path / "ledgers"),
        },
    )
    stream = dep.root / "logs" / "kill-run.log"
    with open(stream, "wb") as fh:
        runner = subprocess.Popen(
            [str(Path(sys.executable).parent / "flwr"), "run", ".", CONNECTION, "--stream",
             "--run-config", str(run_config)],
            cwd=REPO, env={**dep.env, "FLWR_HOME": str(dep.home / ".flwr")},
            stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def training_round_1() -> bool:
        # Round 1 is sent right after round 0 is done; 30 epochs keep site-c busy for seconds.
        return "[fedrec] round 0 done" in stream.read_text(errors="replace")

    _wait(training_round_1, RUN_TIMEOUT, "round 1 to start", victim)
    time.sleep(2.0)
    os.killpg(victim.popen.pid, signal.SIGKILL)  # the SuperNode and its ClientApp
    victim.popen.wait(timeout=10)
    assert runner.wait(timeout=RUN_TIMEOUT) == 0, stream.read_text(errors="replace")[-4000:]
    runs = dep.cli_json("ls", CONNECTION)["runs"]
    assert max(runs, key=lambda r: str(r.get("pending-at", "")))["status"] == "finished:completed"

    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed"
    dead = dep.node_ids["site-c"]
    row1 = next(h for h in results["history"] if h["round"] == 1)
    assert row1["n_aggregated"] == 2
    dropped = {c["node"]: c["dropped"] for c in row1["clients"] if "dropped" in c}
    assert set(dropped) == {dead}, row1["clients"]  # named once, by its own node id
    assert "Node Unavailable" in dropped[dead] or "no reply within" in dropped[dead]
    row2 = next(h for h in results["history"] if h["round"] == 2)
    assert row2["n_aggregated"] == 2 and dead not in {c["node"] for c in row2["clients"]}
