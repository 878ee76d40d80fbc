"""One training run, end to end: check the inputs, cache view features, train, export, write the model.

Nothing half-written: the model folder appears (by one rename) only once the head is exported and
checked; until then the run lives in `<library>/models/trained/.runs/<name>/` (checkpoint after every
epoch), which `--resume` continues and a successful run removes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..decode import decode
from ..embed import trained
from ..embed.registry import _REGISTRY
from ..errors import AlreadyExists, LookalikeError
from .data import (
    SPLIT_SEED,
    VALIDATION_FRACTION,
    Item,
    TrainingDataError,
    check_supervised,
    check_unlabelled,
    labelled_items,
    split,
)
from .views import AUG_VERSION, FeatureCache, view_features

if TYPE_CHECKING:
    from ..library import Library

ProgressFn = Callable[[dict[str, Any]], None]
INSTALL_HINT = ("training needs PyTorch, which is not installed: pip install 'lookalike[train]' "
                "(CPU wheel; for a GPU see docs/training.md)")
CARD_VERSION = 1


class MissingExtra(LookalikeError):
    code = "missing-extra"


class Interrupted(LookalikeError):
    code = "interrupted"


def require_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        raise MissingExtra(INSTALL_HINT)


def check_name(name: str) -> None:
    if not trained.NAME_RE.match(name) or name == "default":
        raise LookalikeError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' (at most 64), "
                             "starting with a letter or digit")
    if name in _REGISTRY or "+" in name:
        raise LookalikeError(f"'{name}' is a built-in model's name; give the trained model another name")


def _fingerprint(mode: str, items: list[Item], validation: list[Item], base: str, views: int) -> str:
    h = hashlib.sha256(f"{mode}|{base}|{views}|{AUG_VERSION}".encode())
    for item in sorted(items, key=lambda i: i.content_hash):
        h.update(f"{item.content_hash}:{item.label}\n".encode())
    h.update(",".join(sorted(i.content_hash for i in validation)).encode())
    return h.hexdigest()[:16]


def _view_recall(embed: Callable[[np.ndarray], np.ndarray], clean: np.ndarray, views: np.ndarray,
                 rows: np.ndarray) -> float:
    """Label-free figure: share of validation pictures whose augmented view finds the picture first."""
    gallery = embed(clean)
    queries = embed(views[rows, 0])
    return float(np.mean(np.argmax(queries @ gallery.T, axis=1) == rows))


def train(lib: Library, name: str, collection: str, *, labels: str | os.PathLike[str] | None = None,
          self_supervised: bool = False, force: bool = False, resume: bool = False,
          progress: ProgressFn | None = None, **params: Any) -> dict[str, Any]:
    """Train model `name` on `collection`'s pictures; returns its model card (also in card.json)."""
    check_name(name)
    if (labels is None) == (not self_supervised):
        raise LookalikeError("give --labels CSV|FOLDER (supervised) or --self-supervised (no labels), not both")
    require_torch()
    known = {f.name for f in fields(_config_type())}
    unknown = sorted(set(params) - known)
    if unknown:
        raise LookalikeError(f"unknown training parameter {unknown[0]!r}; known: {', '.join(sorted(known))}")
    mode = "self-supervised" if self_supervised else "supervised"
    params = {k: v for k, v in params.items() if v is not None}
    config = _config_type()(mode=mode, **params).resolved()
    if not 64 <= config.dim <= 1024:
        raise LookalikeError(f"--dim {config.dim}: choose an output dimension from 64 to 1024")
    model_dir = lib.model_dir
    target = trained.folder(model_dir, name)
    if target.exists() and not force:
        when = ""
        with contextlib.suppress(LookalikeError):
            when = f" (trained {trained.read_card(model_dir, name).get('created', '?')[:16]})"
        raise AlreadyExists(f"model '{name}' exists{when}; use --force to replace it, or another name")
    run_dir = model_dir / trained.SUBDIR / ".runs" / name
    checkpoint = run_dir / "checkpoint.pt"
    if resume and not checkpoint.is_file():
        raise LookalikeError(f"no interrupted run of '{name}' to resume; start one without --resume")
    if checkpoint.is_file() and not resume:
        if not force:
            state = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
            raise Interrupted(f"an interrupted run of '{name}' stopped after epoch {state.get('epoch', '?')} of "
                              f"{state.get('epochs', '?')}: continue it with --resume, or start over with --force")
        shutil.rmtree(run_dir, ignore_errors=True)

    info = lib.store.collection(collection)
    if trained.exists(model_dir, info.model) or info.metric != "cosine":
        raise LookalikeError(f"collection '{collection}' holds {info.model} vectors; train on a collection indexed "
                             "with a pretrained neural model (e.g. the default)")
    ids, clean_all = lib.store.all_vectors(collection)
    records = lib.store.get(collection, ids.tolist())
    catalogue = [Item(int(r.id), r.path, r.content_hash) for r in records]  # type: ignore[arg-type]
    row_of = {int(i): n for n, i in enumerate(ids.tolist())}
    if labels is not None:
        items = labelled_items(Path(labels), catalogue, collection)
        check_supervised(items)
    else:
        items = catalogue
        check_unlabelled(items)
    fraction = VALIDATION_FRACTION
    train_items, validation_items = split(items, fraction=fraction, seed=SPLIT_SEED)
    if not validation_items:
        raise TrainingDataError("too few pictures per class to hold any out for validation: label at least 4 "
                                "pictures in some class")
    fingerprint = _fingerprint(mode, items, validation_items, info.model, config.views)

    from .fit import Data, Trainer, load_checkpoint

    state = None
    if resume:
        state = load_checkpoint(checkpoint)
        if state.get("fingerprint") != fingerprint:
            raise LookalikeError(f"the pictures or labels changed since the interrupted run of '{name}'; "
                                 "start over with --force")
        config = _config_type()(**state["config"])

    embedder = lib.embedder(info.model)
    ordered = train_items + validation_items
    cache = FeatureCache(model_dir / trained.SUBDIR / ".features", embedder.name)

    def loader(item: Item) -> Callable[[], Any]:
        def load() -> Any:
            return decode(lib._source_bytes(lib.store.get(collection, [item.image_id])[0]),
                          max_pixels=lib.settings.max_pixels, draft_size=embedder.draft_size,
                          suffix=Path(item.path).suffix)
        return load

    def view_progress(done: int, total: int) -> None:
        if progress:
            progress({"stage": "views", "done": done, "total": total})

    views = view_features(embedder, [(i.content_hash, loader(i)) for i in ordered], config.views, cache,
                          progress=view_progress)
    clean = clean_all[[row_of[i.image_id] for i in ordered]]
    label_ids = None
    class_names: list[str] = []
    if labels is not None:
        class_names = sorted({i.label or "" for i in ordered})
        index_of = {c: n for n, c in enumerate(class_names)}
        label_ids = np.array([index_of[i.label or ""] for i in ordered], dtype=np.int64)
    data = Data(clean=clean, views=views, labels=label_ids, train=np.arange(len(train_items)),
                validation=np.arange(len(train_items), len(ordered)), extra={"fingerprint": fingerprint})
    trainer = Trainer(config, data, checkpoint)
    if state is not None:
        trainer.load(state)
    run_dir.mkdir(parents=True, exist_ok=True)

    def fit_progress(event: dict[str, Any]) -> None:
        if event["stage"] == "epoch":
            (run_dir / "run.json").write_text(json.dumps({"epoch": event["epoch"], "epochs": event["epochs"],
                                                          "collection": collection, "mode": mode}))
        if progress:
            progress(event)

    try:
        result = trainer.run(fit_progress)
    except KeyboardInterrupt:
        raise Interrupted(f"training of '{name}' interrupted after epoch {trainer.epoch} of {config.epochs}; "
                          f"run the same command with --resume to continue from epoch {trainer.epoch + 1}") from None
    if progress:
        progress({"stage": "export", "done": 0, "total": 1})

    before = trainer.before()
    after = trainer.best if mode == "supervised" else float("nan")
    rows = data.validation
    recall_before = _view_recall(lambda x: x, clean, views, rows)
    recall_after = _view_recall(trainer.embed, clean, views, rows)

    import torch

    from .export import export_head

    tmp = model_dir / trained.SUBDIR / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        diff = export_head(trainer.head, clean.shape[1], tmp / trained.HEAD_FILE, clean[:64])
        version = trained.file_version(tmp / trained.HEAD_FILE)
        torch.save({k: v.detach().cpu() for k, v in trainer.head.state_dict().items()}, tmp / "head.pt")
        per_class = {c: int((label_ids == n).sum()) for n, c in enumerate(class_names)} if label_ids is not None else {}
        metrics: dict[str, Any] = {
            "metric": "mAP@10" if mode == "supervised" else "view recall@1",
            "before": before if mode == "supervised" else recall_before,
            "after": after if mode == "supervised" else recall_after,
            "view_recall_before": recall_before, "view_recall_after": recall_after,
            "validation_on": f"{len(validation_items)} held-out pictures (queries) against all {len(ordered)}",
            "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
            "stopped_early": result["stopped_early"], "history": result["history"],
        }
        card = {
            "card_version": CARD_VERSION, "name": name, "version": version, "base": info.model,
            "input_dim": int(clean.shape[1]), "dim": config.dim, "input_size": embedder.card.input_size,
            "mode": mode, "loss": config.loss, "collection": collection,
            "data": {"labels": str(Path(labels).resolve()) if labels is not None else None,
                     "pictures": len(ordered), "classes": len(class_names), "per_class": per_class,
                     "fingerprint": fingerprint},
            "parameters": asdict(config),
            "split": {"seed": SPLIT_SEED, "validation_fraction": fraction, "train": len(train_items),
                      "validation": len(validation_items),
                      "validation_images": sorted(i.path for i in validation_items)},
            "metrics": metrics, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "training_seconds": round(result["seconds"], 1), "export_max_abs_diff": diff,
            "torch": torch.__version__, "device": str(trainer.device),
            "licence": embedder.card.licence,
        }
        (tmp / trained.CARD_FILE).write_text(json.dumps(card, indent=1))
        old = None
        if target.exists():
            old = target.with_name(f".old-{name}-{os.getpid()}")
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    lib.forget_embedder(name)
    return card


def _config_type() -> Any:
    from .fit import Config

    return Config
