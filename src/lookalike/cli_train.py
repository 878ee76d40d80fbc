"""`lookalike train`: a thin face over `Library.train` (registered on the main group by cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .config import DEFAULT_COLLECTION


@click.command()
@click.argument("name")
@click.option("--collection", "-c", default=DEFAULT_COLLECTION, show_default=True,
              help="Collection whose pictures to train on (indexed with a pretrained model).")
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="CSV image,label (paths absolute or relative to the indexed folder) or a folder per class.")
@click.option("--self-supervised", "self_supervised", is_flag=True, help="Learn from the pictures alone, no labels.")
@click.option("--dim", type=click.IntRange(64, 1024), default=None, help="Output dimension (default 256).")
@click.option("--epochs", type=click.IntRange(1, 10_000), default=None,
              help="Most epochs (early stopping may end sooner).")
@click.option("--loss", type=click.Choice(["supcon", "cosface", "nt-xent"]), default=None,
              help="Default: supcon with labels, nt-xent without.")
@click.option("--views", type=click.IntRange(1, 64), default=None,
              help="Augmented views cached per picture (default 4).")
@click.option("--device", default=None, help="torch device: auto (default), cpu, cuda, cuda:1, ...")
@click.option("--force", is_flag=True, help="Replace a model of this name (or discard its interrupted run).")
@click.option("--resume", is_flag=True, help="Continue this name's interrupted run from its last checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
@click.pass_context
def train(ctx: click.Context, name: str, collection: str, labels: Path | None, self_supervised: bool,
          dim: int | None, epochs: int | None, loss: str | None, views: int | None, device: str | None,
          force: bool, resume: bool, as_json: bool) -> None:
    """Train model NAME on a collection's pictures (--labels or --self-supervised); use it with --model NAME."""
    from .cli import _emit, _library, progress_bar

    if (labels is None) == (not self_supervised):
        raise click.UsageError("give --labels CSV|FOLDER or --self-supervised (one of them)")
    lib = _library(ctx)
    bar: Any = None
    progress_fn = None
    if not as_json and sys.stderr.isatty():
        bar, task = progress_bar("caching views", "info")
        state = {"stage": ""}

        def progress_fn(event: dict[str, Any]) -> None:
            stage = event["stage"]
            if stage != state["stage"] and stage in ("views", "train"):
                state["stage"] = stage
                bar.reset(task, total=event["total"], description="caching views" if stage == "views" else "training")
            if stage == "views":
                bar.update(task, completed=event["done"], total=event["total"], info="")
            elif stage in ("train", "epoch"):
                info = f"epoch {event['epoch']}/{event['epochs']} loss {event['loss']:.4f}"
                if "best" in event:
                    info += f" val {event['validation']:.4f} (best {event['best']:.4f} @ {event['best_epoch']})"
                    state["info"] = info
                bar.update(task, completed=event["done"], total=event["total"],
                           info=info if "best" in event else state.get("info", info))
            elif stage == "export":
                bar.update(task, description="exporting", info="")
    params = {"dim": dim, "epochs": epochs, "loss": loss, "views": views, "device": device}
    try:
        card = lib.train(name, collection, labels=labels, self_supervised=self_supervised, force=force,
                         resume=resume, progress=progress_fn, **{k: v for k, v in params.items() if v is not None})
    finally:
        if bar is not None:
            bar.stop()
    if as_json:
        _emit(card)
        return
    m = card["metrics"]
    click.echo(f"{card['name']}@{card['version']}: {card['mode']} ({card['loss']}) head {card['input_dim']} -> "
               f"{card['dim']} on {card['base']}; {card['split']['train']} train / {card['split']['validation']} "
               f"held-out pictures; validation {m['metric']} {m['before']:.3f} -> {m['after']:.3f}; "
               f"{m['epochs_run']} epochs (best {m['best_epoch']}), {card['training_seconds']:.0f} s")
    click.echo(f"use it: lookalike index FOLDER -c NEW_COLLECTION --model {card['name']}")


def print_trained(cards: list[dict[str, Any]]) -> None:
    """The trained models' lineage and figures, under `lookalike models`' table."""
    trained = [c for c in cards if c.get("extra", {}).get("trained")]
    if not trained:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="trained on this library's pictures", show_edge=False)
    for col in ("name", "base", "mode", "collection", "pictures", "split", "validation", "created"):
        table.add_column(col, overflow="fold", no_wrap=col == "name")
    for c in trained:
        e = c["extra"]
        m, s, d = e.get("metrics") or {}, e.get("split") or {}, e.get("data") or {}
        table.add_row(c["name"], str(e.get("base")), f"{e.get('mode')} ({(e.get('parameters') or {}).get('loss')})",
                      str(e.get("collection")), f"{d.get('pictures')} ({d.get('classes') or 'no'} classes)",
                      f"{s.get('train')}/{s.get('validation')} seed {s.get('seed')}",
                      f"{m.get('metric')} {m.get('before', 0):.3f} -> {m.get('after', 0):.3f}",
                      str(e.get("created", ""))[:16])
    Console(width=None if sys.stdout.isatty() else 250).print(table)
