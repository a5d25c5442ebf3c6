"""The portable adapter folder: PEFT files + head + `fedrec.json`, written atomically, reopened."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from common.config.base import ConfigError
from common.config.data import DataConfig
from common.config.model import LoraConfig, ModelConfig
from common.model.backbone import BUNDLED_ID, backbone_digest, portable_backbone
from common.model.towers import COOC_KEY, HEAD_FILE, PRIOR_KEY, RecModel, trainable_state

META_FILE = "fedrec.json"
FORMAT = 1


@dataclass(frozen=True)
class AdapterInfo:
    """What `fedrec.json` says about an adapter folder (no local paths in it).

    ``model`` is the model config with ``backbone`` as recorded (`portable_backbone`) and no
    cache folder; ``data`` holds the data settings without ``data.dir`` (None if unknown);
    ``catalogue`` is the `catalogue_digest` of the items it was trained on ("" if unknown).
    """

    model: ModelConfig
    history_len: int
    n_items: int
    backbone_digest: str
    catalogue: str
    data: dict[str, Any] | None
    extra: dict[str, Any]


def catalogue_digest(item_ids: Iterable[Any], item_texts: Sequence[str]) -> str:
    """Content hash of a catalogue: item ids (as text) and item texts, in index order."""
    h = hashlib.sha256()
    for item, text in zip(item_ids, item_texts, strict=True):
        h.update(f"{item}\t{text}\n".encode())
    return h.hexdigest()[:32]


def write_adapter(
    model: RecModel,
    folder: str | Path,
    *,
    data: DataConfig | None = None,
    catalogue: str = "",
    extra: dict[str, Any] | None = None,
) -> Path:
    """`save_adapter` plus `fedrec.json`, into a temporary folder then swapped in place.

    A reader never sees a half-written folder: either the previous adapter or the new one.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        save_adapter(model, tmp)
        meta = _meta(model, data, catalogue, extra or {})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        _swap(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _swap(new: Path, folder: Path) -> None:
    """Put folder `new` at `folder` (renames only; the old one is removed afterwards)."""
    if not folder.exists():
        os.replace(new, folder)
        return
    old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old."))
    os.replace(folder, old / "adapter")
    os.replace(new, folder)
    shutil.rmtree(old, ignore_errors=True)


def _meta(
    model: RecModel, data: DataConfig | None, catalogue: str, extra: dict[str, Any]
) -> dict[str, Any]:
    settings = dataclasses.asdict(model.cfg)
    settings["backbone"] = portable_backbone(model.cfg.backbone)
    settings["cache_dir"] = ""
    data_settings = None
    if data is not None:
        data_settings = {
            f"data.{k.replace('_', '-')}": v
            for k, v in dataclasses.asdict(data).items()
            if k != "dir"
        }
        if Path(data.new_items_file).is_absolute():  # no site path in the folder: see docs
            data_settings["data.new-items-file"] = ""
    return {
        "format": FORMAT,
        "model": settings,
        "history_len": int(model.recency.num_embeddings),
        "n_items": int(model.prior.numel()),
        "backbone_digest": backbone_digest(model.cfg.backbone),
        "catalogue": catalogue,
        "data": data_settings,
        "extra": extra,
    }


def read_info(folder: str | Path) -> AdapterInfo:
    """Parse `fedrec.json` of an adapter folder; a clear `ConfigError` naming the file if bad."""
    path = Path(folder) / META_FILE
    if not Path(folder).is_dir():
        raise ConfigError(f"adapter folder {folder}: not found")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: file not found (not an adapter folder written by fedrec, or written "
            "before adapters carried their description)"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else meta
        raise ConfigError(f"{path}: `format` must be {FORMAT}, got {got!r}")
    try:
        settings = dict(meta["model"])
        model = ModelConfig(**{**settings, "lora": LoraConfig(**settings["lora"])})
        return AdapterInfo(
            model=model,
            history_len=int(meta["history_len"]),
            n_items=int(meta["n_items"]),
            backbone_digest=str(meta["backbone_digest"]),
            catalogue=str(meta.get("catalogue") or ""),
            data=meta.get("data"),
            extra=dict(meta.get("extra") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: bad or missing field ({type(exc).__name__}: {exc})") from None


def open_adapter(
    folder: str | Path, *, backbone: str | None = None, cache_dir: str = "", device: str = "cpu"
) -> tuple[RecModel, AdapterInfo]:
    """Load an adapter folder wherever it lies; its backbone is resolved here, not recorded.

    `backbone` (a folder) overrides the recorded name; the recorded `BUNDLED_ID` is the
    bundled copy; any other recorded name is tried as a path. The backbone found must have
    the digest the adapter was trained on.
    """
    info = read_info(folder)
    name = backbone if backbone else info.model.backbone
    if name == BUNDLED_ID:
        name = ""
    try:
        digest = backbone_digest(name)
    except (ValueError, OSError) as exc:
        where = "" if backbone else " (the adapter records its name only, tried as a path here)"
        raise ConfigError(
            f"adapter {folder} was trained on backbone {info.model.backbone!r}, which is not "
            f"found{where}; pass its folder as the backbone (--backbone FOLDER, the same "
            f"folder as the run's model.backbone). Detail: {exc}"
        ) from None
    if digest != info.backbone_digest:
        raise ConfigError(
            f"backbone {name or BUNDLED_ID!r} is not the one adapter {folder} was trained on "
            f"(digest {digest}, expected {info.backbone_digest})"
        )
    cfg = dataclasses.replace(info.model, backbone=name, cache_dir=cache_dir)
    model = load_adapter(
        cfg, folder, n_items=info.n_items, history_len=info.history_len, device=device
    )
    return model.eval(), info


def save_adapter(model: RecModel, folder: str | Path) -> Path:
    """Save the adapter in PEFT's format (`save_pretrained`) plus the head beside it.

    `adapter_config.json` (and PEFT's model card) name the backbone by `portable_backbone`,
    never by a local absolute path; `load_adapter` ignores that name and uses `cfg.backbone`.
    """
    folder = Path(folder)
    model.bert.save_pretrained(str(folder))
    _portable_names(folder, model.bert.peft_config["default"].base_model_name_or_path,
                    portable_backbone(model.cfg.backbone))  # fmt: skip
    head = {
        k: torch.from_numpy(np.array(v))
        for k, v in trainable_state(model).items()
        if not k.startswith("lora.")
    }
    save_file(head, str(folder / HEAD_FILE))
    return folder


def _portable_names(folder: Path, local: str | None, portable: str) -> None:
    """Replace the backbone's local path PEFT wrote (config and model card) by `portable`."""
    config = folder / "adapter_config.json"
    meta = json.loads(config.read_text())
    meta["base_model_name_or_path"] = portable
    config.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    card = folder / "README.md"
    if local and card.exists():
        card.write_text(card.read_text().replace(str(local), portable))


def load_adapter(
    cfg: ModelConfig, folder: str | Path, *, n_items: int, history_len: int, device: str = "cpu"
) -> RecModel:
    """Rebuild a model and load an adapter saved by `save_adapter` (via `PeftModel`)."""
    folder = Path(folder)
    model = RecModel(cfg, n_items=n_items, history_len=history_len, device=device)
    base = model.bert.get_base_model()
    loaded = PeftModel.from_pretrained(base, str(folder), is_trainable=True).to(device)
    model.bert = loaded
    head = load_file(str(folder / HEAD_FILE))
    params = dict(model.named_parameters())
    if COOC_KEY in head and (model.cooc is None or model.cooc.shape != head[COOC_KEY].shape):
        raise ConfigError(f"adapter {folder} carries a {tuple(head[COOC_KEY].shape)} "
                          "co-occurrence matrix; the model config has model.cooc-items = "
                          f"{cfg.cooc_items}")  # fmt: skip
    with torch.no_grad():
        for k, v in head.items():
            if k == PRIOR_KEY:
                model.prior.copy_(v)
            elif k == COOC_KEY and model.cooc is not None:
                model.cooc.copy_(v)
            elif k[5:] in params:
                params[k[5:]].copy_(v)
            else:
                raise ConfigError(f"adapter {folder}: `{k}` in {HEAD_FILE} is not a parameter "
                                  "of the configured model")  # fmt: skip
    return model
