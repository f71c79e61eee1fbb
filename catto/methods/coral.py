"""CORAL (arXiv 2602.06022, docs/design.md §5): MLP probes on residual-stream activations that steer option probabilities.

Per option k of a question: the residual-stream activation at layer L averaged over the option's answer tokens
(question + option run as one sequence; all options of an item in one batched forward with
`output_hidden_states`), centred across the question's options, plus rank features (the option's probability and its
rank among the options), z-scored with the training split's statistics. An MLP probe (1024-512-256-128, ReLU,
dropout 0.2, tanh output) regresses the residual y_k - p_k (y one-hot gold, p the scoring layer's option
probabilities) with MSE + an output penalty (lambda * mean r^2). Steering: p' = normalise(clip(p + gamma (r - mean r), 0)).

Model selection on a validation split of the labelled items: for every layer of a band and every (weight decay,
output penalty) of the grids, the probe with the best validation R^2 of y - p is kept. If no probe beats predicting
zero (R^2 <= `min_r2`), the activations carry no usable signal and steering is switched off (gamma 0, p unchanged):
CORAL then claims no improvement.

Grids (the authors' defaults as far as the paper states them: weight decay "picked by validation from {0..45}"; the
output-penalty grid and the training schedule are not given there, so these are catto's choices):
weight decays (0, 1, 5, 15, 30, 45) with AdamW, output penalties (0, 0.1, 1.0).

Activations are cached under `cache_dir` (one safetensors file per model and layer, one tensor per item keyed by a
hash of the item's text), so a second fit, the probe grid and evaluation on the same items do not re-run the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.items import MCQAItem
from ..eval.results import ItemResult
from ..eval.scoring import cloze_requests, left_padded_batch, model_device, pad_token_id
from .base import Evaluator, ScoringFields, register_method

DEFAULT_WEIGHT_DECAYS = (0.0, 1.0, 5.0, 15.0, 30.0, 45.0)
DEFAULT_OUTPUT_PENALTIES = (0.0, 0.1, 1.0)


# ---------------------------------------------------------------------------------------------------------- config
@dataclasses.dataclass
class CoralConfig(ScoringFields):
    layers: list[int] | None = dataclasses.field(default=None, metadata={
        "help": "Candidate layers (index into hidden_states: 0 = embeddings, n = last block); the best by validation "
                "R^2 is used. Default: the middle band, every layer from 1/4 to 3/4 of the depth (at most 5)."})
    hidden_sizes: list[int] = dataclasses.field(default_factory=lambda: [1024, 512, 256, 128], metadata={
        "help": "Probe MLP hidden widths (the paper: 1024 512 256 128)."})
    dropout: float = dataclasses.field(default=0.2, metadata={"help": "Probe dropout (the paper: 0.2)."})
    weight_decays: list[float] = dataclasses.field(default_factory=lambda: list(DEFAULT_WEIGHT_DECAYS), metadata={
        "help": "AdamW weight-decay grid searched on the validation split."})
    output_penalties: list[float] = dataclasses.field(default_factory=lambda: list(DEFAULT_OUTPUT_PENALTIES),
                                                      metadata={"help": "Output-penalty (lambda * mean r^2) grid."})
    epochs: int = dataclasses.field(default=60, metadata={"help": "Probe training epochs."})
    lr: float = dataclasses.field(default=1e-3, metadata={"help": "Probe learning rate (AdamW)."})
    probe_batch_size: int = dataclasses.field(default=256, metadata={"help": "Option rows per probe step."})
    val_fraction: float = dataclasses.field(default=0.25, metadata={
        "help": "Share of the labelled items (whole questions) held out to pick layer, weight decay and penalty."})
    gamma: float = dataclasses.field(default=1.0, metadata={"help": "Steering strength in p + gamma (r - mean r)."})
    min_r2: float = dataclasses.field(default=0.0, metadata={
        "help": "Steer only if the best validation R^2 exceeds this; otherwise gamma is set to 0 (no claim)."})
    cache_dir: str | None = dataclasses.field(default=None, metadata={
        "help": "Folder for cached activations (safetensors per model and layer); none: kept in memory only."})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the split, probe init and shuffling."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers is not None and (not self.layers or any(int(x) < 0 for x in self.layers)):
            raise ValueError(f"`layers` must be a non-empty list of hidden_states indices >= 0, got {self.layers}.")
        if not self.hidden_sizes or any(int(h) < 1 for h in self.hidden_sizes):
            raise ValueError(f"`hidden_sizes` must be positive widths, got {self.hidden_sizes}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout}.")
        for name in ("weight_decays", "output_penalties"):
            grid = getattr(self, name)
            if not grid or any(float(v) < 0 for v in grid):
                raise ValueError(f"`{name}` must be a non-empty list of values >= 0, got {grid}.")
        if self.epochs < 1 or self.probe_batch_size < 1 or not self.lr > 0:
            raise ValueError("`epochs`, `probe_batch_size` must be >= 1 and `lr` > 0, got "
                             f"{self.epochs}, {self.probe_batch_size}, {self.lr}.")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in (0, 1), got {self.val_fraction}.")
        if self.gamma < 0:
            raise ValueError(f"`gamma` must be >= 0, got {self.gamma}.")


# ---------------------------------------------------------------------------------------------------- pure math
def steer(p: torch.Tensor, r: torch.Tensor, gamma: float) -> torch.Tensor:
    """p' = normalise(clip(p + gamma (r - mean r), 0)) over one question's options (falls back to p if all clip).

    >>> steer(torch.tensor([0.7, 0.3]), torch.tensor([-0.2, 0.2]), 1.0)
    tensor([0.5000, 0.5000])
    """
    shifted = (p + gamma * (r - r.mean())).clamp_min(0)
    total = shifted.sum()
    return shifted / total if total > 0 else p


def option_features(acts: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(K, d + 2) features of one question: activations centred across its options, the option's probability and its
    rank among the options (0 = most probable, 1 = least)."""
    k = acts.shape[0]
    centred = acts - acts.mean(0, keepdim=True)
    rank = torch.argsort(torch.argsort(-p)).to(acts.dtype) / max(k - 1, 1)
    return torch.cat([centred, p[:, None].to(acts.dtype), rank[:, None]], dim=1)


def r_squared(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Coefficient of determination of `pred` for `target` (1 - SSE / SST); 0 means no better than the mean."""
    sst = float(((target - target.mean()) ** 2).sum())
    return 1.0 - float(((target - pred) ** 2).sum()) / sst if sst > 0 else 0.0


class Probe(torch.nn.Module):
    """MLP d -> hidden... -> 1 with ReLU, dropout and a tanh output (the residual y - p lies in [-1, 1])."""

    def __init__(self, d_in: int, hidden: Sequence[int], dropout: float):
        super().__init__()
        layers: list[torch.nn.Module] = []
        for width in hidden:
            layers += [torch.nn.Linear(d_in, int(width)), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
            d_in = int(width)
        layers += [torch.nn.Linear(d_in, 1), torch.nn.Tanh()]
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[..., 0]


def train_probe(x: torch.Tensor, y: torch.Tensor, *, hidden: Sequence[int], dropout: float, weight_decay: float,
                output_penalty: float, epochs: int, lr: float, batch_size: int, seed: int) -> Probe:
    """Fit a probe to targets `y` (MSE + output_penalty * mean r^2), deterministic given `seed`."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = Probe(x.shape[1], hidden, dropout)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    probe.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], batch_size):
            idx = perm[start:start + batch_size]
            r = probe(x[idx])
            loss = ((r - y[idx]) ** 2).mean() + output_penalty * (r ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    probe.eval()
    return probe


@dataclasses.dataclass
class ProbeSelection:
    """The chosen probe and what the validation grid saw."""

    layer: int
    weight_decay: float
    output_penalty: float
    val_r2: float
    probe: Probe
    mean: torch.Tensor
    std: torch.Tensor
    grid: list[dict]


def select_probe(acts_by_layer: dict[int, list[torch.Tensor]], probs: list[torch.Tensor], golds: Sequence[int],
                 config: CoralConfig) -> ProbeSelection:
    """Split the questions into train / validation, z-score on train, grid over layers x weight decay x penalty,
    keep the best validation R^2. `acts_by_layer[L][i]` is question i's (K_i, d) activations."""
    n = len(probs)
    if n < 4:
        raise ValueError(f"CORAL needs at least 4 labelled items to hold some out for validation, got {n}.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed)).tolist()
    n_val = min(max(1, round(n * config.val_fraction)), n - 1)
    val_idx, train_idx = order[:n_val], order[n_val:]
    targets = [torch.nn.functional.one_hot(torch.tensor(g), len(p)).float() - p.float() for g, p in zip(golds, probs)]

    def stack(layer, idx):
        x = torch.cat([option_features(acts_by_layer[layer][i].float(), probs[i].float()) for i in idx])
        return x, torch.cat([targets[i] for i in idx])

    best, grid = None, []
    for layer in sorted(acts_by_layer):
        x_tr, y_tr = stack(layer, train_idx)
        x_va, y_va = stack(layer, val_idx)
        mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-6)
        x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std
        for wd in config.weight_decays:
            for op in config.output_penalties:
                probe = train_probe(x_tr, y_tr, hidden=config.hidden_sizes, dropout=config.dropout,
                                    weight_decay=float(wd), output_penalty=float(op), epochs=config.epochs,
                                    lr=config.lr, batch_size=config.probe_batch_size, seed=config.seed)
                with torch.no_grad():
                    r2 = r_squared(probe(x_va), y_va)
                grid.append({"layer": layer, "weight_decay": float(wd), "output_penalty": float(op), "val_r2": r2})
                if best is None or r2 > best.val_r2:
                    best = ProbeSelection(layer, float(wd), float(op), r2, probe, mean, std, [])
    best.grid = grid
    return best


# ---------------------------------------------------------------------------------------------------- activations
def _item_key(item: MCQAItem) -> str:
    text = json.dumps([item.context, item.question, list(item.choices)], ensure_ascii=False)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _model_key(model) -> str:
    cfg = model.config
    name = str(getattr(cfg, "_name_or_path", "") or "")
    digest = hashlib.sha1(json.dumps([name, cfg.to_json_string()]).encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in os.path.basename(name.rstrip("/")))
    return f"{safe or 'model'}-{digest}"


def default_layers(n_layers: int) -> list[int]:
    """The middle band of hidden_states indices (1/4 .. 3/4 of the depth), at most 5 evenly spaced layers."""
    lo, hi = max(1, n_layers // 4), max(1, (3 * n_layers) // 4)
    band = sorted(set(np.linspace(lo, hi, min(5, hi - lo + 1)).round().astype(int).tolist()))
    return band


class ActivationCache:
    """Mean answer-token activations per (model, layer, item), computed once and kept in safetensors files."""

    def __init__(self, folder: str | None):
        self.folder = folder
        self.memory: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    def _path(self, model_key: str, layer: int) -> str:
        return os.path.join(self.folder, model_key, f"layer_{layer}.safetensors")

    def _load(self, model_key: str, layer: int) -> dict[str, torch.Tensor]:
        key = (model_key, layer)
        if key not in self.memory:
            from safetensors.torch import load_file

            path = self._path(model_key, layer) if self.folder else None
            self.memory[key] = dict(load_file(path)) if path and os.path.exists(path) else {}
        return self.memory[key]

    def _save(self, model_key: str, layer: int) -> None:
        if not self.folder:
            return
        from safetensors.torch import save

        from ..io import atomic_write

        with atomic_write(self._path(model_key, layer), "wb") as f:
            f.write(save({k: v.contiguous() for k, v in self.memory[(model_key, layer)].items()}))

    @torch.no_grad()
    def get(self, model, tokenizer, items: Sequence[MCQAItem], layers: Sequence[int], fmt,
            batch_size: int, progress: bool = False) -> dict[int, list[torch.Tensor]]:
        """{layer: [(K_i, d) float32 activations of item i]} for `items`, running the model only for missing ones."""
        mkey = _model_key(model)
        stores = {layer: self._load(mkey, layer) for layer in layers}
        keys = [_item_key(it) for it in items]
        todo = sorted({i for i, k in enumerate(keys) if any(k not in s for s in stores.values())},
                      key=lambda i: len(items[i].question))
        if todo:
            device, pad = model_device(model), pad_token_id(tokenizer)
            requests = cloze_requests(tokenizer, [items[i] for i in todo], fmt)
            batch: list[int] = []
            bar = tqdm(total=len(todo), desc="coral activations", unit="item", disable=not progress)
            for pos, (i, req) in enumerate(zip(todo, requests)):
                batch.append(pos)
                if sum(len(requests[j][1]) for j in batch) >= batch_size or pos == len(todo) - 1:
                    self._run(model, [requests[j] for j in batch], [keys[todo[j]] for j in batch], stores, layers,
                              pad, device)
                    bar.update(len(batch))
                    batch = []
            bar.close()
            for layer in layers:
                self._save(mkey, layer)
        return {layer: [stores[layer][k] for k in keys] for layer in layers}

    @staticmethod
    def _run(model, requests, keys, stores, layers, pad, device) -> None:
        rows = [(r, ctx + cont, len(cont)) for r, (ctx, conts) in enumerate(requests) for cont in conts]
        ids, mask, pos = left_padded_batch([seq for _, seq, _ in rows], pad, device)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True, use_cache=False,
                    logits_to_keep=1)
        hidden = out.hidden_states
        for layer in layers:
            if layer >= len(hidden):
                raise ValueError(f"CORAL layer {layer} does not exist: the model has hidden_states 0..{len(hidden) - 1}.")
            h = hidden[layer].float()
            per_item: list[list[torch.Tensor]] = [[] for _ in requests]
            for row, (r, _, n) in enumerate(rows):
                per_item[r].append(h[row, -n:].mean(0).cpu())
            for r, key in enumerate(keys):
                stores[layer][key] = torch.stack(per_item[r])


# ---------------------------------------------------------------------------------------------------- evaluator
@register_method
class CoralEvaluator(Evaluator):
    """CORAL probes: fit on labelled items of one dataset, steer the option probabilities of any dataset.

    Example:
        >>> from catto.data.synthetic import make_model, make_tokenizer, MCQA_VOCAB
        >>> from catto.data import MCQAItem
        >>> items = [MCQAItem(f"q{i}", f"w{i} w2", ("w3", "w4", f"w{i + 5}"), gold=i % 3) for i in range(12)]
        >>> model, tok = make_model(vocab_size=len(MCQA_VOCAB)), make_tokenizer(MCQA_VOCAB)
        >>> coral = CoralEvaluator(scoring="cloze", hidden_sizes=[8], weight_decays=[0.0], output_penalties=[0.0],
        ...                        epochs=2).fit(model, tok, items[:8])
        >>> coral.layer in coral.candidate_layers and len(coral.evaluate(model, tok, items[8:])) == 4
        True
    """

    name = "coral"
    config_class = CoralConfig
    needs_labels = True

    def __init__(self, config: CoralConfig | None = None, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.cache = ActivationCache(self.config.cache_dir)
        self.probe: Probe | None = None
        self.layer: int | None = None
        self.candidate_layers: list[int] = []
        self.selection: dict[str, Any] = {}
        self.mean = self.std = None
        self.gamma = self.config.gamma

    def _layers(self, model) -> list[int]:
        if self.config.layers is not None:
            return [int(x) for x in self.config.layers]
        return default_layers(int(model.config.num_hidden_layers))

    def _activations(self, model, tokenizer, items, layers):
        fmt = self.config.scoring_config().cloze_format
        return self.cache.get(model, tokenizer, items, layers, fmt, self.config.batch_size, progress=self.progress)

    def fit(self, model, tokenizer, items: Sequence[MCQAItem]) -> CoralEvaluator:
        super().fit(model, tokenizer, items)
        self.candidate_layers = self._layers(model)
        scored = self.config.score(model, tokenizer, items, progress=self.progress)
        probs = [torch.tensor(r.option_probs, dtype=torch.float32) for r in scored]
        acts = self._activations(model, tokenizer, items, self.candidate_layers)
        best = select_probe(acts, probs, [it.gold for it in items], self.config)
        self.probe, self.layer, self.mean, self.std = best.probe, best.layer, best.mean, best.std
        self.gamma = self.config.gamma if best.val_r2 > self.config.min_r2 else 0.0
        self.selection = {"layer": best.layer, "weight_decay": best.weight_decay,
                          "output_penalty": best.output_penalty, "val_r2": best.val_r2, "grid": best.grid,
                          "steering": "on" if self.gamma > 0 else f"off (best validation R^2 {best.val_r2:.4f} <= "
                                                                   f"min_r2 {self.config.min_r2})"}
        return self

    def residuals(self, acts: list[torch.Tensor], probs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The probe's predicted y - p for each question's options."""
        if self.probe is None:
            raise RuntimeError("CORAL is not fitted: call fit() or load a saved evaluator first.")
        with torch.no_grad():
            return [self.probe((option_features(a.float(), p.float()) - self.mean) / self.std)
                    for a, p in zip(acts, probs)]

    def evaluate(self, model, tokenizer, items: Sequence[MCQAItem]) -> list[ItemResult]:
        scored = self.config.score(model, tokenizer, items, progress=self.progress)
        probs = [torch.tensor(r.option_probs, dtype=torch.float32) for r in scored]
        acts = self._activations(model, tokenizer, items, [self.layer])[self.layer]
        out = []
        for r, p, res in zip(scored, probs, self.residuals(acts, probs)):
            steered = steer(p.double(), res.double(), self.gamma)
            steered = (steered / steered.sum()).tolist()
            pred = int(np.argmax(steered))
            out.append(dataclasses.replace(
                r, option_probs=steered, prediction=pred, confidence=steered[pred],
                correct=None if r.gold is None else pred == r.gold,
                extra={**r.extra, "uncalibrated_probs": r.option_probs, "probe_residual": res.tolist(),
                       "coral_layer": self.layer}))
        return out

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.probe is None:
            return {}
        return {**{f"probe.{k}": v for k, v in self.probe.state_dict().items()}, "feature_mean": self.mean,
                "feature_std": self.std}

    def state_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "candidate_layers": self.candidate_layers, "gamma_used": self.gamma,
                "selection": self.selection}

    def load_state(self, tensors, state) -> None:
        self.layer = state.get("layer")
        self.candidate_layers = list(state.get("candidate_layers", []))
        self.gamma = float(state.get("gamma_used", self.config.gamma))
        self.selection = dict(state.get("selection", {}))
        if tensors:
            self.mean, self.std = tensors["feature_mean"], tensors["feature_std"]
            self.probe = Probe(self.mean.shape[0], self.config.hidden_sizes, self.config.dropout)
            self.probe.load_state_dict({k.removeprefix("probe."): v for k, v in tensors.items()
                                        if k.startswith("probe.")})
            self.probe.eval()
