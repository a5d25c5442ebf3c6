"""Per-round server checkpoints (atomic), so a restarted server resumes where it stopped."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from common.config.parse import PREDATING, without_inert
from common.config.run import RunConfig
from common.io import write_json_atomic

# Keys that may differ between the interrupted and the resumed run.
_RESUMABLE = {
    "fed.rounds",
    "fed.round-timeout",
    "fed.node-wait",
    "fed.out-dir",
    "fed.deliver-final",
}


class Checkpoint:
    """`out/checkpoint/{state.npz,meta.json}`: the global state after the last finished round."""

    def __init__(self, out: Path, cfg: RunConfig) -> None:
        self.dir = out / "checkpoint"
        self.config = {k: v for k, v in cfg.flat().items() if k not in _RESUMABLE}

    def load(
        self, initial: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]], int]:
        """(state, history, first round to run); the initial state when nothing is saved."""
        meta_f = self.dir / "meta.json"
        if not meta_f.exists():
            return initial, [], 1
        try:
            meta = json.loads(meta_f.read_text())
            with np.load(self.dir / meta["state"]) as z:
                state = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as exc:
            raise RuntimeError(
                f"checkpoint {self.dir} is unreadable ({exc}); move it away to start from scratch"
            ) from exc
        # A checkpoint written before a key existed ran with that key's earlier behaviour;
        # keys that cannot change this run (`without_inert`) are not compared.
        predating = {k: v for k, v in PREDATING.items() if k in self.config}
        recorded = without_inert({**_jsonable(predating), **meta["config"]})
        current = without_inert(_jsonable(self.config))
        if recorded != current:
            diff = sorted(k for k in current if recorded.get(k) != current[k])
            raise RuntimeError(
                f"checkpoint {self.dir} belongs to a run with a different config "
                f"(keys {diff}); use another fed.out-dir"
            )
        if set(state) != set(initial):
            raise RuntimeError(f"checkpoint {self.dir} does not match the model's arrays")
        return state, list(meta["history"]), int(meta["round"]) + 1

    def save(self, rnd: int, state: dict[str, np.ndarray], history: list[dict[str, Any]]) -> None:
        """Write the state first, then the metadata that points at it (both atomic)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"state-{rnd:04d}.npz"
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".npz")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **state)  # type: ignore[arg-type]
        os.replace(tmp, self.dir / name)
        write_json_atomic(
            self.dir / "meta.json",
            {"round": rnd, "state": name, "config": _jsonable(self.config), "history": history},
        )
        for old in self.dir.glob("state-*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(
        json.dumps(
            {
                k: (str(v) if isinstance(v, float) and not np.isfinite(v) else v)
                for k, v in d.items()
            }
        )
    )
