"""The training loop (torch): a projection head on cached backbone vectors.

Losses (picked by measurement, docs/training.md):
  * supervised: `supcon` (supervised contrastive, Khosla et al. 2020: every other view of the same class
    is a positive) or `cosface` (large-margin cosine classifier, Wang et al. 2018; the class weights are
    dropped after training, only the embedding is kept);
  * self-supervised: `nt-xent` (SimCLR: two views of one picture are positives, everything else in the
    batch negatives), optionally with `neighbours` > 0 extra positives per picture taken from its
    mutual nearest neighbours in the backbone space (NNCLR-style; the labels are never seen).

Inputs per picture: its clean backbone vector (from the collection) and `views` augmented ones (cache).
Each step draws two of these per picture. Early stopping on the validation split, a checkpoint after
every epoch (`--resume` continues from it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Per-mode defaults, chosen on tf_flowers (docs/benchmarks.md, "Training"): with labels a linear CosFace
# head beat supervised contrastive and MLP heads; without labels every head that moved far from the
# backbone's geometry lost retrieval quality, so the self-supervised default moves little.
DEFAULTS = {
    "supervised": {"loss": "cosface", "dim": 256, "hidden": 0, "lr": 3e-3, "epochs": 40},
    "self-supervised": {"loss": "nt-xent", "dim": 512, "hidden": 0, "lr": 1e-4, "epochs": 15},
}


@dataclass
class Config:
    mode: str = "supervised"  # or "self-supervised"
    loss: str | None = None  # supcon | cosface (supervised); nt-xent | clusters (self-supervised)
    dim: int | None = None  # output dimension, 64..1024
    hidden: int | None = None  # 0: linear head; else P x + MLP(x) with this hidden width
    epochs: int | None = None
    lr: float | None = None
    batch: int = 256
    weight_decay: float = 1e-4
    temperature: float = 0.1
    margin: float = 0.25  # cosface (0.35 won cross-validation by 0.009 but lost end to end: docs/benchmarks.md)
    scale: float = 30.0  # cosface
    neighbours: int = 0  # self-supervised: mutual-kNN positives per picture
    clusters: int = 0  # self-supervised loss "clusters": k-means pseudo-classes of the backbone vectors
    views: int = 4
    init: str = "pca"  # or "random"
    patience: int = 6
    seed: int = 0
    device: str = "auto"

    def resolved(self) -> Config:
        values = asdict(self)
        for key, value in DEFAULTS.get(self.mode, DEFAULTS["supervised"]).items():
            if values[key] is None:
                values[key] = value
        return Config(**values)


class Head(nn.Module):
    """raw(x) = P x + MLP(x). P starts as the top-`dim` principal directions of the training vectors and
    the MLP's last layer at zero, so training starts from the backbone's own geometry (a PCA projection,
    which costs little retrieval quality) and only moves away from it as far as the loss asks."""

    def __init__(self, in_dim: int, dim: int, hidden: int, init: np.ndarray | None = None) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim, bias=False)
        if init is not None:
            with torch.no_grad():
                self.proj.weight.copy_(torch.from_numpy(np.ascontiguousarray(init[:dim], dtype=np.float32)))
        self.mlp: nn.Module | None = None
        if hidden:
            self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def raw(self, features: torch.Tensor) -> torch.Tensor:
        out = self.proj(features)
        return out + self.mlp(features) if self.mlp is not None else out

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.raw(features), dim=-1)


def principal_directions(x: np.ndarray, dim: int) -> np.ndarray:
    """(dim, D) top right-singular vectors of x (uncentred: the directions cosine search uses most)."""
    _, _, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    out = np.zeros((dim, x.shape[1]))
    out[:min(dim, len(vt))] = vt[:dim]
    return out.astype(np.float32)


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    sim = z @ z.T / temperature
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, -1e9)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    count = positive.sum(1).clamp(min=1)
    return -((log_prob * positive).sum(1) / count).mean()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, extra: torch.Tensor | None = None) -> torch.Tensor:
    """SimCLR's loss over 2B views; `extra` (B, B) bool marks further positive pairs (neighbours)."""
    z = torch.cat([z1, z2])
    b = z1.shape[0]
    idx = torch.arange(b, device=z.device)
    pair = torch.zeros(2 * b, 2 * b, dtype=torch.bool, device=z.device)
    pair[idx, idx + b] = True
    pair[idx + b, idx] = True
    if extra is not None:
        big = extra.repeat(2, 2)
        pair |= big & ~torch.eye(2 * b, dtype=torch.bool, device=z.device)
    labels_sim = z @ z.T / temperature
    eye = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    labels_sim = labels_sim.masked_fill(eye, -1e9)
    log_prob = labels_sim - torch.logsumexp(labels_sim, dim=1, keepdim=True)
    return -((log_prob * pair).sum(1) / pair.sum(1)).mean()


def average_precision_at(scores: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                         self_index: np.ndarray, k: int = 10) -> float:
    """mAP@k of queries (rows of `scores` against the gallery), each query's own gallery row excluded."""
    scores = scores.copy()
    scores[np.arange(len(scores)), self_index] = -np.inf
    order = np.argsort(-scores, axis=1)[:, :k]
    rel = gallery_labels[order] == query_labels[:, None]
    n_rel = np.array([(gallery_labels == q).sum() - 1 for q in query_labels])
    precision = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
    ap = (precision * rel).sum(1) / np.maximum(np.minimum(k, n_rel), 1)
    return float(ap.mean())


def pseudo_labels(x: np.ndarray, rows: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means (spherical, Faiss) pseudo-classes of the training rows; every row gets its nearest centroid."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=30, seed=seed, spherical=True, verbose=False)
    km.train(np.ascontiguousarray(x[rows], dtype=np.float32))
    _, assign = km.index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return assign[:, 0].astype(np.int64)


def mutual_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """(N, N) bool: i and j are in each other's top-k by cosine (self excluded)."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :k]
    near = np.zeros(sims.shape, dtype=bool)
    near[np.arange(len(x))[:, None], top] = True
    return near & near.T


@dataclass
class Data:
    clean: np.ndarray  # (N, D) backbone vectors of the pictures as indexed
    views: np.ndarray  # (N, V, D) backbone vectors of augmented views
    labels: np.ndarray | None  # (N,) int class ids (supervised) or None
    train: np.ndarray  # indices into the above
    validation: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[dict[str, Any]], None]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    def __init__(self, config: Config, data: Data, checkpoint: Path | None = None) -> None:
        self.config = config.resolved()
        self.data = data
        self.checkpoint = checkpoint
        self.device = pick_device(self.config.device)
        torch.manual_seed(self.config.seed)
        in_dim = data.clean.shape[1]
        init = principal_directions(np.concatenate([data.clean[data.train], data.views[data.train, 0]]),
                                    self.config.dim) if self.config.init == "pca" else None
        self.head = Head(in_dim, self.config.dim, self.config.hidden, init).to(self.device)
        if self.config.mode != "supervised" and self.config.loss == "clusters":
            data.labels = pseudo_labels(data.clean, data.train, self.config.clusters or 20, self.config.seed)
        self.classes = int(data.labels.max()) + 1 if data.labels is not None else 0
        params = list(self.head.parameters())
        self.class_weights: nn.Parameter | None = None
        if self.config.loss == "cosface":
            self.class_weights = nn.Parameter(torch.randn(self.classes, self.config.dim, device=self.device) * 0.01)
            params.append(self.class_weights)
        self.optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.epoch = 0
        self.best = -math.inf
        self.best_epoch = 0
        self.best_state: dict[str, Any] | None = None
        self.history: list[dict[str, float]] = []
        self.elapsed = 0.0
        self.rng = np.random.default_rng(self.config.seed)
        self._neighbours: np.ndarray | None = None
        if self.config.mode != "supervised" and self.config.neighbours > 0:
            train_x = data.clean[data.train]
            self._neighbours = mutual_neighbours(train_x, self.config.neighbours)

    # -- checkpoints ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "epoch": self.epoch, "best": self.best, "best_epoch": self.best_epoch,
                "best_state": self.best_state, "head": self.head.state_dict(),
                "class_weights": None if self.class_weights is None else self.class_weights.detach().cpu(),
                "optimizer": self.optimizer.state_dict(), "history": self.history, "elapsed": self.elapsed,
                "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                "fingerprint": self.data.extra.get("fingerprint")}

    def save(self) -> None:
        if self.checkpoint is None:
            return
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint.with_name(self.checkpoint.name + ".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(self.checkpoint)

    def load(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.best, self.best_epoch, self.best_state = state["best"], state["best_epoch"], state["best_state"]
        self.head.load_state_dict(state["head"])
        if self.class_weights is not None and state["class_weights"] is not None:
            with torch.no_grad():
                self.class_weights.copy_(state["class_weights"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = state["history"]
        self.elapsed = state["elapsed"]
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])

    # -- one epoch --------------------------------------------------------------------------------
    def _inputs(self, rows: np.ndarray) -> torch.Tensor:
        """One random input per picture: the clean vector or one of its augmented views."""
        v = self.data.views.shape[1]
        pick = self.rng.integers(0, v + 1, size=len(rows))
        out = np.where((pick == v)[:, None], self.data.clean[rows],
                       self.data.views[rows, np.minimum(pick, v - 1)])
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(self.device)

    def _loss(self, rows: np.ndarray) -> torch.Tensor:
        c = self.config
        z1, z2 = self.head(self._inputs(rows)), self.head(self._inputs(rows))
        if c.mode == "supervised" or c.loss == "clusters":
            assert self.data.labels is not None
            labels = torch.from_numpy(self.data.labels[rows]).to(self.device)
            if c.loss == "cosface":
                assert self.class_weights is not None
                w = F.normalize(self.class_weights, dim=-1)
                z = torch.cat([z1, z2])
                y = torch.cat([labels, labels])
                logits = z @ w.T - c.margin * F.one_hot(y, self.classes)
                return F.cross_entropy(c.scale * logits, y)
            return supcon_loss(torch.cat([z1, z2]), torch.cat([labels, labels]), c.temperature)
        extra = None
        if self._neighbours is not None:
            local = np.searchsorted(self.data.train, rows)
            extra = torch.from_numpy(self._neighbours[np.ix_(local, local)]).to(self.device)
        return nt_xent(z1, z2, c.temperature, extra)

    def embed(self, x: np.ndarray) -> np.ndarray:
        self.head.eval()
        with torch.no_grad():
            out = self.head(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device))
        self.head.train()
        return out.cpu().numpy()

    def validate(self) -> float:
        """Higher is better: mAP@10 of validation pictures (supervised), else -(validation loss)."""
        d = self.data
        if self.config.mode == "supervised":
            assert d.labels is not None
            gallery = np.concatenate([d.train, d.validation])
            z = self.embed(d.clean[gallery])
            q = z[len(d.train):]
            return average_precision_at(q @ z.T, d.labels[d.validation], d.labels[gallery],
                                        np.arange(len(d.train), len(gallery)))
        state = self.rng.bit_generator.state
        self.rng = np.random.default_rng(12345)  # the same views every epoch
        self.head.eval()
        with torch.no_grad():
            rows = d.validation
            loss = float(nt_xent(self.head(self._inputs(rows)), self.head(self._inputs(rows)),
                                 self.config.temperature))
        self.head.train()
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state
        return -loss

    def before(self) -> float:
        """The validation figure of the backbone alone (supervised: mAP@10), for the model card."""
        d = self.data
        if self.config.mode != "supervised" or d.labels is None:
            return float("nan")
        gallery = np.concatenate([d.train, d.validation])
        x = d.clean[gallery]
        return average_precision_at(x[len(d.train):] @ x.T, d.labels[d.validation], d.labels[gallery],
                                    np.arange(len(d.train), len(gallery)))

    def run(self, progress: ProgressFn | None = None) -> dict[str, Any]:
        c = self.config
        train = self.data.train
        steps = max(1, math.ceil(len(train) / c.batch))
        total = c.epochs * steps
        while self.epoch < c.epochs and self.epoch - self.best_epoch < c.patience:
            start = time.monotonic()
            order = self.rng.permutation(train)
            losses = []
            for step in range(steps):
                rows = np.sort(order[step * c.batch:(step + 1) * c.batch])
                if len(rows) < 2:
                    continue
                loss = self._loss(rows)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                losses.append(float(loss.detach()))
                if progress:
                    progress({"stage": "train", "done": self.epoch * steps + step + 1, "total": total,
                              "epoch": self.epoch + 1, "epochs": c.epochs, "loss": float(np.mean(losses))})
            self.epoch += 1
            score = self.validate()
            self.history.append({"epoch": self.epoch, "loss": float(np.mean(losses)) if losses else 0.0,
                                 "validation": score})
            if score > self.best:
                self.best, self.best_epoch = score, self.epoch
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()}
            self.elapsed += time.monotonic() - start
            self.save()
            if progress:
                progress({"stage": "epoch", "done": self.epoch * steps, "total": total, "epoch": self.epoch,
                          "epochs": c.epochs, "loss": self.history[-1]["loss"], "validation": score,
                          "best": self.best, "best_epoch": self.best_epoch})
        if self.best_state is not None:
            self.head.load_state_dict(self.best_state)
        return {"epochs_run": self.epoch, "best_epoch": self.best_epoch, "best": self.best,
                "history": self.history, "seconds": self.elapsed,
                "stopped_early": self.epoch < c.epochs}


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=False)
