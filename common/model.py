"""Two towers on one frozen backbone: LoRA-adapted item tower, attention-pooled user tower."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from common.backbone import additive_mask, load_backbone, portable_backbone
from common.catalogue import Catalogue, mean_pool
from common.config import ModelConfig
from common.privacy import prior_scores

HEAD_FILE = "head.safetensors"
PRIOR_KEY = "prior"
# Shared seed for LoRA A matrices: with FFA-LoRA every client derives the same frozen A.
LORA_SEED = 20231


class RecModel(nn.Module):
    """Scores ``s(u, i) = <user(u), item(i)> / T + w * prior(i)``.

    Item tower: cached lower-layer states (or tokens) -> top BERT layers with LoRA -> mean
    pooling -> optional projection -> L2 norm. User tower: frozen item vectors of the history
    -> optional projection -> attention pooling with a learned recency bias -> L2 norm.
    Trainable: LoRA tensors (only B under FFA-LoRA) and the small head; never the backbone.
    """

    bert: PeftModel
    prior: torch.Tensor
    prior_weight: nn.Linear
    n_lower: int

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        n_items: int,
        history_len: int,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.cfg = cfg
        bert: Any = load_backbone(cfg.backbone)
        bert = bert.to(device)  # move before get_peft_model (pitfall)
        n_layers = int(bert.config.num_hidden_layers)
        if cfg.lora.layers > n_layers:
            raise ValueError(
                f"`model.lora.layers` = {cfg.lora.layers} exceeds the backbone's {n_layers} layers."
            )
        self.n_lower = n_layers - cfg.lora.layers
        peft_cfg = PeftLoraConfig(
            r=cfg.lora.rank,
            lora_alpha=cfg.lora.alpha,  # type: ignore[arg-type]
            lora_dropout=0.0,
            target_modules=cfg.lora.target_modules,
            layers_to_transform=list(range(self.n_lower, n_layers)),
            layers_pattern="layer",
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(LORA_SEED)
            self.bert = get_peft_model(bert, peft_cfg)  # type: ignore[assignment]
        if cfg.lora.ffa:
            for name, p in self.bert.named_parameters():
                if "lora_A" in name:
                    p.requires_grad_(False)
        hidden = bert.config.hidden_size
        dim = cfg.proj_dim or hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(LORA_SEED + 1)
            self.item_proj = nn.Linear(hidden, dim) if cfg.proj_dim else nn.Identity()
            self.user_proj = nn.Linear(hidden, dim) if cfg.proj_dim else nn.Identity()
            self.attn = nn.Linear(dim, 1)
            nn.init.zeros_(self.attn.weight)
            nn.init.zeros_(self.attn.bias)
            self.recency = nn.Embedding(history_len, 1)
            nn.init.zeros_(self.recency.weight)
            self.prior_weight = nn.Linear(1, 1, bias=False)
            nn.init.constant_(self.prior_weight.weight, cfg.prior_weight if cfg.prior else 0.0)
        if not cfg.prior:
            self.prior_weight.weight.requires_grad_(False)
        self.register_buffer(PRIOR_KEY, torch.zeros(n_items))
        self.to(device)

    @property
    def device(self) -> torch.device:
        """Device of the model."""
        return self.prior.device

    def top_layers(self) -> nn.ModuleList:
        """The adapted backbone layers that run per step."""
        base: Any = self.bert.base_model
        layers: nn.ModuleList = base.model.encoder.layer
        return layers[self.n_lower :]  # type: ignore[return-value]

    def encode_items(self, items: torch.Tensor, cat: Catalogue) -> torch.Tensor:
        """``[M]`` item indices -> ``[M, D]`` normalised item vectors (grad through LoRA)."""
        idx = items.cpu().numpy()
        mask = cat.attention_mask[idx]
        width = max(int(mask.sum(1).max()), 1)
        mask = mask[:, :width].to(self.device)
        if cat.lower is not None and cat.n_lower == self.n_lower:
            hidden = torch.from_numpy(np.asarray(cat.lower[idx][:, :width]))
            hidden = hidden.to(self.device, torch.float32)
            ext = additive_mask(mask, hidden.dtype)
            for layer in self.top_layers():
                out = layer(hidden, attention_mask=ext)
                hidden = out[0] if isinstance(out, tuple) else out
        else:
            ids = cat.input_ids[idx][:, :width].to(self.device)
            hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        return nn.functional.normalize(self.item_proj(mean_pool(hidden, mask)), dim=-1)

    def encode_users(
        self, hist: torch.Tensor, hist_mask: torch.Tensor, cat: Catalogue
    ) -> torch.Tensor:
        """``[B, T]`` history item indices (left-padded, mask 1 = real) -> ``[B, D]``."""
        x, w = self.attend(hist, hist_mask, cat)
        user = (w.unsqueeze(-1) * x).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-9)
        return nn.functional.normalize(user, dim=-1)

    def attend(
        self, hist: torch.Tensor, hist_mask: torch.Tensor, cat: Catalogue
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The user tower's inputs: ``[B, T, D]`` history vectors, ``[B, T]`` attention weights.

        The weights are zero on padding; `encode_users` divides by their sum, so the user
        vector is the normalised attention-weighted mean of the history vectors.
        """
        x = self.user_proj(cat.frozen[hist.cpu()].to(self.device))
        pos = torch.arange(hist.shape[1], device=self.device).expand_as(hist)
        logits = self.attn(x).squeeze(-1) + self.recency(pos).squeeze(-1)
        logits = logits.masked_fill(hist_mask == 0, torch.finfo(logits.dtype).min)
        return x, torch.softmax(logits, dim=-1) * hist_mask

    def forward(
        self, hist: torch.Tensor, hist_mask: torch.Tensor, cands: torch.Tensor, cat: Catalogue
    ) -> torch.Tensor:
        """Scores ``[B, K]`` of each user's K candidate items.

        The item tower runs on the flattened ``[B*K]`` candidates; `train.regroup_grad_samples`
        folds its per-row gradients back to one per user before clipping.
        """
        b, k = cands.shape
        users = self.encode_users(hist, hist_mask, cat)
        items = self.encode_items(cands.reshape(-1), cat).view(b, k, -1)
        dots = (users.unsqueeze(1) * items).sum(-1) / self.cfg.temperature
        prior = self.prior_feature()[cands].unsqueeze(-1)
        return dots + self.prior_weight(prior).squeeze(-1)

    def prior_feature(self) -> torch.Tensor:
        """``[n_items]`` standardised log-popularity of the (noisy) histogram in `prior`."""
        feat = prior_scores(self.prior.detach().cpu().numpy(), head_share=self.cfg.prior_head_share)
        return torch.from_numpy(feat).to(self.device)

    def item_tower_params(self) -> list[nn.Parameter]:
        """Trainable parameters whose per-sample gradients come per candidate row."""
        return [p for n, p in self.bert.named_parameters() if p.requires_grad]


def trainable_state(model: RecModel) -> dict[str, np.ndarray]:
    """Exactly what travels: trainable adapter tensors, the head, and the public prior."""
    out: dict[str, np.ndarray] = {}
    trainable = {n for n, p in model.bert.named_parameters() if p.requires_grad}
    adapter = get_peft_model_state_dict(model.bert)
    for name, value in adapter.items():
        live = name.replace(".weight", ".default.weight")
        if any(t.endswith(live) or t == live for t in trainable):
            out[f"lora.{name}"] = value.detach().cpu().numpy().copy()
    for name, p in model.named_parameters():
        if p.requires_grad and not name.startswith("bert."):
            out[f"head.{name}"] = p.detach().cpu().numpy().copy()
    out[PRIOR_KEY] = model.prior.detach().cpu().numpy().copy()
    return out


def load_trainable_state(model: RecModel, state: dict[str, np.ndarray]) -> None:
    """Load `state` (as from `trainable_state`); names and shapes must match exactly."""
    expected = trainable_state(model)
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"state names do not match the model: missing {missing}, extra {extra}")
    for name, value in state.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"state `{name}` has shape {tuple(value.shape)}, expected "
                f"{tuple(expected[name].shape)}"
            )
    lora = {k[5:]: torch.from_numpy(np.array(v)) for k, v in state.items() if k.startswith("lora.")}
    result = set_peft_model_state_dict(model.bert, lora)
    bad = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    if bad:
        raise ValueError(f"peft did not accept adapter keys {bad}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            if k.startswith("head."):
                params[k[5:]].copy_(torch.from_numpy(np.array(v)))
        model.prior.copy_(torch.from_numpy(np.array(state[PRIOR_KEY])))


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
    with torch.no_grad():
        for k, v in head.items():
            if k == PRIOR_KEY:
                model.prior.copy_(v)
            else:
                params[k[5:]].copy_(v)
    return model
