"""Two towers on one frozen backbone: LoRA-adapted item tower, attention-pooled user tower."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from common.config.model import ModelConfig
from common.model.backbone import additive_mask, load_backbone
from common.model.catalogue import Catalogue, mean_pool
from common.privacy.cooc import ease_table, flat_history, history_scores
from common.privacy.prior import prior_scores

HEAD_FILE = "head.safetensors"
PRIOR_KEY = "prior"
COOC_KEY = "cooc"  # the (noisy) Gram matrix of the prior's head items, released in round 0
PUBLIC_KEYS = (PRIOR_KEY, COOC_KEY)  # released statistics: summed in round 0, never trained
# Shared seed for LoRA A matrices: with FFA-LoRA every client derives the same frozen A.
LORA_SEED = 20231


class RecModel(nn.Module):
    """Scores ``s(u, i) = <user(u), item(i)> / T + w * prior(i) [+ b_i] [+ c * cooc(u, i)]``.

    Item tower: cached lower-layer states (or tokens) -> top BERT layers with LoRA -> mean
    pooling -> optional projection -> L2 norm. User tower: frozen item vectors of the history
    -> optional projection -> attention pooling with a learned recency bias -> L2 norm.
    Trainable: LoRA tensors (only B under FFA-LoRA) and the small head; never the backbone.
    With `model.cooc-items`, ``cooc(u, i)`` is EASE on the released co-occurrence matrix of
    the prior's head items, scored from the user's history (`cooc_scores`).
    """

    bert: PeftModel
    prior: torch.Tensor
    new_item: torch.Tensor
    prior_weight: nn.Linear
    cooc: torch.Tensor | None
    cooc_weight: nn.Linear | None
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
        if cfg.id_dim and cfg.id_dim != dim:
            raise ValueError(
                f"`model.id-dim` = {cfg.id_dim} must equal the towers' width {dim} "
                "(`model.proj-dim`, or the backbone's width when it is 0)"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(LORA_SEED + 1)
            self.item_proj = projection(hidden, cfg.proj_dim, cfg.proj_hidden)
            self.user_proj = projection(hidden, cfg.proj_dim, cfg.proj_hidden)
            self.attn = nn.Linear(dim, 1)
            nn.init.zeros_(self.attn.weight)
            nn.init.zeros_(self.attn.bias)
            self.recency = nn.Embedding(history_len, 1)
            nn.init.zeros_(self.recency.weight)
            self.prior_weight = nn.Linear(1, 1, bias=False)
            nn.init.constant_(self.prior_weight.weight, cfg.prior_weight if cfg.prior else 0.0)
        if not cfg.prior:
            self.prior_weight.weight.requires_grad_(False)
        # Collaborative per-item parameters (zero at start: the model begins as text-only).
        self.item_id = nn.Embedding(n_items, dim) if cfg.id_dim else None
        self.item_bias = nn.Embedding(n_items, 1) if cfg.item_bias else None
        for emb in (self.item_id, self.item_bias):
            if emb is not None:
                nn.init.zeros_(emb.weight)
        self.register_buffer(PRIOR_KEY, torch.zeros(n_items))
        # Public catalogue flag, set from the data (`common.model.new_items`); never travels.
        self.register_buffer("new_item", torch.zeros(n_items, dtype=torch.bool), persistent=False)
        n_head = min(cfg.cooc_items, n_items)
        self.register_buffer(COOC_KEY, torch.zeros(n_head, n_head) if n_head else None)
        self.cooc_weight = nn.Linear(1, 1, bias=False) if n_head else None
        if self.cooc_weight is not None:
            nn.init.constant_(self.cooc_weight.weight, cfg.cooc_weight)
        self._cooc_table: tuple[tuple[int, ...], torch.Tensor, torch.Tensor] | None = None
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

    def text_items(self, items: torch.Tensor, cat: Catalogue) -> torch.Tensor:
        """``[M]`` item indices -> ``[M, H]`` mean-pooled top-layer text states (grad via LoRA)."""
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
        return mean_pool(hidden, mask)

    def item_vectors(self, text: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Text states ``[..., H]`` of items ``[...]`` -> normalised ``[..., D]`` item vectors.

        ``proj(text) + id(item)``, L2-normalised. Called batch-first (``[B, K, H]``) in
        training so the head's per-sample gradients are per user without regrouping.
        """
        vec = self.item_proj(text)
        if self.item_id is not None:
            vec = vec + self.item_id(items.to(self.device))
        return nn.functional.normalize(vec, dim=-1)

    def bias_of(self, items: torch.Tensor) -> torch.Tensor:
        """Per-item bias of ``items`` (same shape; zeros without `model.item-bias`)."""
        if self.item_bias is None:
            return torch.zeros(items.shape, device=self.device)
        return self.item_bias(items.to(self.device)).squeeze(-1)

    def encode_items(self, items: torch.Tensor, cat: Catalogue) -> torch.Tensor:
        """``[M]`` item indices -> ``[M, D]`` normalised item vectors (grad through LoRA)."""
        return self.item_vectors(self.text_items(items, cat), items)

    def encode_users(
        self,
        hist: torch.Tensor,
        hist_mask: torch.Tensor,
        cat: Catalogue,
        table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, T]`` history item indices (left-padded, mask 1 = real) -> ``[B, D]``.

        `table` (``user_proj(cat.frozen)``, ``[n_items, D]``) saves projecting each history
        row separately; only without DP (its per-sample gradients are not per user).
        """
        x, w = self.attend(hist, hist_mask, cat, table)
        user = (w.unsqueeze(-1) * x).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-9)
        return nn.functional.normalize(user, dim=-1)

    def attend(
        self,
        hist: torch.Tensor,
        hist_mask: torch.Tensor,
        cat: Catalogue,
        table: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The user tower's inputs: ``[B, T, D]`` history vectors, ``[B, T]`` attention weights.

        The weights are zero on padding; `encode_users` divides by their sum, so the user
        vector is the normalised attention-weighted mean of the history vectors (each the
        projected text vector plus, with `model.id-dim`, the item's ID vector).
        """
        if table is not None:
            x = table[hist.to(self.device)]
        else:
            x = self.user_proj(cat.frozen[hist.cpu()].to(self.device))
        if self.item_id is not None:  # the history's ID vectors, shared with the item tower
            x = x + self.item_id(hist.to(self.device))
        pos = torch.arange(hist.shape[1], device=self.device).expand_as(hist)
        logits = self.attn(x).squeeze(-1) + self.recency(pos).squeeze(-1)
        logits = logits.masked_fill(hist_mask == 0, torch.finfo(logits.dtype).min)
        return x, torch.softmax(logits, dim=-1) * hist_mask

    def forward(
        self,
        hist: torch.Tensor,
        hist_mask: torch.Tensor,
        cands: torch.Tensor,
        cat: Catalogue,
        prefix: Sequence[np.ndarray] | None = None,
    ) -> torch.Tensor:
        """Scores ``[B, K]`` of each user's K candidate items.

        `prefix` holds each row's whole chronological history (what `cooc_of` reads); it may
        be None only for a model without the co-occurrence term.

        The LoRA layers run on the flattened ``[B*K]`` candidates; `train.regroup_grad_samples`
        folds their per-row gradients back to one per user before clipping. The head (projection,
        ID embedding, bias, prior weight) runs batch-first, so its gradients are per user.
        """
        users = self.encode_users(hist, hist_mask, cat)
        return self.score_candidates(users, cands, cat, self.cooc_rows(prefix))

    def cooc_rows(self, prefix: Sequence[np.ndarray] | None) -> torch.Tensor | None:
        """`cooc_of` the rows' histories `prefix`; refuses None when the term is on.

        The user tower's window is not enough: the term reads what `model.cooc-decay` says
        from the whole history, and a silent fallback would train or rank on another feature.
        """
        if prefix is not None:
            return self.cooc_of(prefix)
        if self.has_cooc():
            raise ValueError(
                "the co-occurrence term (model.cooc-items) reads each row's chronological "
                "history; pass it (prefix)"
            )
        return None

    def score_candidates(
        self, users: torch.Tensor, cands: torch.Tensor, cat: Catalogue,
        cooc: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """``[B, D]`` user vectors and ``[B, K]`` candidates -> ``[B, K]`` live scores.

        `cooc` is the users' ``[B, n_items]`` `cooc_of` (None: no co-occurrence term).
        """
        b, k = cands.shape
        text = self.text_items(cands.reshape(-1), cat).view(b, k, -1)
        return self.score_text(users, text, cands, cooc)

    def score_text(
        self, users: torch.Tensor, text: torch.Tensor, cands: torch.Tensor,
        cooc: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Scores ``[B, K]`` from users ``[B, D]`` and candidate text states ``[B, K, H]``."""
        items = self.item_vectors(text, cands)
        dots = (users.unsqueeze(1) * items).sum(-1) / self.cfg.temperature
        prior = self.prior_feature()[cands].unsqueeze(-1)
        out = dots + self.prior_weight(prior).squeeze(-1) + self.bias_of(cands)
        if cooc is not None and self.cooc_weight is not None:
            out = out + self.cooc_weight(cooc.gather(1, cands).unsqueeze(-1)).squeeze(-1)
        return out

    def catalogue_scores(
        self, users: torch.Tensor, text: torch.Tensor, cooc: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, n_items]`` scores of every item from all items' text states ``[n_items, H]``."""
        every = torch.arange(text.shape[0], device=self.device)
        items = self.item_vectors(text, every)
        return users @ items.T / self.cfg.temperature + self.public_scores(cooc)

    def public_scores(self, cooc: torch.Tensor | None = None) -> torch.Tensor:
        """The scores' terms from released statistics and per-item parameters.

        ``[n_items]`` (weighted prior plus item bias) or, with the users' `cooc_of`,
        ``[B, n_items]`` with the weighted co-occurrence term added.
        """
        every = torch.arange(self.prior.numel(), device=self.device)
        prior = self.prior_weight(self.prior_feature().unsqueeze(-1)).squeeze(-1)
        out = prior + self.bias_of(every)
        if cooc is not None and self.cooc_weight is not None:
            out = out + self.cooc_weight(cooc.unsqueeze(-1)).squeeze(-1)
        return out

    def cooc_of(self, histories: Sequence[np.ndarray]) -> torch.Tensor | None:
        """``[B, n_items]`` co-occurrence scores of chronological histories (None: no release).

        What is read follows `model.cooc-decay`: 0, the last ``data.history-len`` items (the
        user tower's window), equally weighted; in (0, 1], the whole history, each item
        ``decay ** age`` (1: all equally). Only released statistics and the user's own
        history enter it (no gradient).
        """
        if not self.has_cooc():
            return None
        window = self.recency.num_embeddings if self.cfg.cooc_decay == 0 else None
        rows, items, weights = flat_history(histories, window=window, decay=self.cfg.cooc_decay)
        flat = (torch.from_numpy(rows), torch.from_numpy(items), torch.from_numpy(weights))
        return self._cooc_scores(flat, len(histories))

    def has_cooc(self) -> bool:
        """Whether the co-occurrence term is on and both of its releases have arrived."""
        return self.cooc is not None and bool(self.cooc.any()) and bool(self.prior.any())

    def _cooc_scores(
        self, flat: tuple[torch.Tensor, torch.Tensor, torch.Tensor], n_rows: int
    ) -> torch.Tensor:
        """EASE (built once per released matrix) of flat (row, item, weight) histories."""
        cooc = self.cooc
        if cooc is None:
            raise RuntimeError("no co-occurrence matrix (model.cooc-items = 0)")
        # Once per released matrix: the buffers' storage and in-place version counters change
        # whenever a state is loaded into them (copying the matrix to compare cost a copy).
        key = (cooc.data_ptr(), cooc._version, self.prior.data_ptr(), self.prior._version)
        if self._cooc_table is None or self._cooc_table[0] != key:
            gram, prior = cooc.detach().cpu().numpy(), self.prior.detach().cpu().numpy()
            top, ease = ease_table(gram, prior, l2=self.cfg.cooc_lambda,
                                   history_len=self.recency.num_embeddings)  # fmt: skip
            dev = self.device
            self._cooc_table = (key, torch.from_numpy(top).to(dev), torch.from_numpy(ease).to(dev))
        _, head, b = self._cooc_table
        return history_scores(flat, n_rows, head, b, self.prior.numel())

    def prior_feature(self) -> torch.Tensor:
        """``[n_items]`` standardised log-popularity of the (noisy) histogram in `prior`."""
        feat = prior_scores(self.prior.detach().cpu().numpy(), head_share=self.cfg.prior_head_share)
        return torch.from_numpy(feat).to(self.device)

    def item_tower_params(self) -> list[nn.Parameter]:
        """Trainable parameters whose per-sample gradients come per candidate row."""
        return [p for n, p in self.bert.named_parameters() if p.requires_grad]


def projection(hidden: int, dim: int, inner: int) -> nn.Module:
    """The towers' head: identity (``dim = 0``), one linear layer, or two with GELU (``inner``)."""
    if not dim:
        return nn.Identity()
    if not inner:
        return nn.Linear(hidden, dim)
    return nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, dim))


def trainable_state(model: RecModel) -> dict[str, np.ndarray]:
    """Exactly what travels: trainable adapter tensors, the head, and the released statistics."""
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
    if model.cooc is not None:
        out[COOC_KEY] = model.cooc.detach().cpu().numpy().copy()
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
        if model.cooc is not None:
            model.cooc.copy_(torch.from_numpy(np.array(state[COOC_KEY])))
