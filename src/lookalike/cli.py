"""The `lookalike` command: a thin face over `Library`. Exit codes: 0 ok, 1 user error, 2 usage error."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from .config import DEFAULT_COLLECTION
from .errors import LookalikeError

JSON_HELP = "Print machine-readable JSON on stdout."


def _library(ctx: click.Context) -> Any:
    from .library import Library

    if "library" not in ctx.obj:
        ctx.obj["library"] = Library.open(ctx.obj.get("home"), store=ctx.obj.get("store"))
        ctx.call_on_close(ctx.obj["library"].close)
    return ctx.obj["library"]


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _console() -> Any:
    from rich.console import Console

    return Console()


def progress_bar(description: str, field: str) -> tuple[Any, Any]:
    """A started rich progress bar (on stderr) with one task whose extra column shows `task.fields[field]`."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[" + field + "]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   transient=True)
    task = bar.add_task(description, total=None, **{field: ""})
    bar.start()
    return bar, task


collection_option = click.option("--collection", "-c", default=DEFAULT_COLLECTION, show_default=True,
                                 help="Collection to use.")
json_option = click.option("--json", "as_json", is_flag=True, help=JSON_HELP)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", envvar="LOOKALIKE_HOME", type=click.Path(file_okay=False),
              help="Library directory (default: $LOOKALIKE_HOME or the user's data dir).")
@click.option("--store", "store", default=None, metavar="URI",
              help="Where vectors live: embedded (default), milvus:PATH.db (Milvus Lite) or "
                   "milvus:http://HOST:19530 (default: $LOOKALIKE_STORE or lookalike.toml).")
@click.version_option(package_name="lookalike")
@click.pass_context
def cli(ctx: click.Context, home: str | None, store: str | None) -> None:
    """lookalike: find the images that look alike."""
    ctx.ensure_object(dict)
    ctx.obj["home"] = home
    ctx.obj["store"] = store


def _check_engine(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A wrong --engine is a usage error (exit 2), found before any work starts."""
    from .engine import check_engine
    from .errors import EngineError

    try:
        return None if value is None else check_engine(value)
    except EngineError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@collection_option
@click.option("--model", "-m", default=None, help="Embedder (see `lookalike models`); a collection keeps its own.")
@click.option("--prune", is_flag=True, help="Forget indexed files under PATHS that no longer exist.")
@click.option("--group", "group_id", default=None, help="Group id stored with every image of this run.")
@click.option("--tag", "tags", multiple=True, help="Tag stored with every image of this run (repeatable).")
@click.option("--index-spec", default="auto", show_default=True,
              help="Faiss index_factory string for a new collection, e.g. 'HNSW32' or 'IVF1024,PQ32'.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the run report (counts, skipped files with reasons) to this JSON file.")
@click.option("--regions", type=click.Choice(["objects"]), default=None,
              help="Also index each image's regions (detected objects and proposals): finds an object in a busy "
                   "picture; the collection keeps them up to date from then on.")
@click.option("--engine", default=None, callback=_check_engine,
              help="Where to read, decode and embed: local (default: this process), local-cluster (a Dask "
                   "cluster on this machine), or a Dask scheduler address tcp://HOST:8786 (docs/distributed.md).")
@json_option
@click.pass_context
def index(ctx: click.Context, paths: tuple[Path, ...], collection: str, model: str | None, prune: bool,
          group_id: str | None, tags: tuple[str, ...], index_spec: str, report_file: Path | None,
          regions: str | None, engine: str | None, as_json: bool) -> None:
    """Index image files and folders (re-runs are incremental)."""
    lib = _library(ctx)
    show_progress = not as_json and sys.stderr.isatty()
    progress_fn = refine_fn = None
    bar = None
    if show_progress:
        bar, task = progress_bar("indexing", "rate")

        def progress_fn(done: int, total: int) -> None:
            speed = bar.tasks[0].speed
            bar.update(task, completed=done, total=total, rate=f"{speed:.1f} img/s" if speed else "")

        def refine_fn(done: int, total: int) -> None:
            bar.update(task, description="refining (DBA)", completed=done, total=total, rate="")
    try:
        report = lib.index(list(paths), collection, model=model, prune=prune, group_id=group_id,
                           tags=list(tags), index_spec=index_spec, progress=progress_fn,
                           refine_progress=refine_fn, regions=regions, engine=engine)
    finally:
        if bar is not None:
            bar.stop()
    if report_file:
        report_file.write_text(json.dumps(report.to_dict(), indent=2))
    if as_json:
        _emit(report.to_dict())
        return
    skipped = report.skipped_by_reason()
    click.echo(f"{collection}: {report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
               f"{report.removed} removed, {len(report.skipped)} skipped "
               f"({report.images_per_second:.1f} img/s); {report.count} images in the collection")
    if skipped:
        click.echo("skipped: " + ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())), err=True)
        for item in report.skipped[:20]:
            click.echo(f"  {item.reason:14} {item.path}  {item.detail[:80]}", err=True)
        if len(report.skipped) > 20:
            click.echo(f"  ... and {len(report.skipped) - 20} more", err=True)
        click.echo(f"full list: {report.report_path}", err=True)


def _parse_filters(group_id: str | None, tags: tuple[str, ...], where: tuple[str, ...],
                   path_prefix: str | None) -> Any:
    from .store import Filter

    metadata: dict[str, Any] = {}
    for item in where:
        if "=" not in item:
            raise click.BadParameter(f"'{item}' is not KEY=VALUE", param_hint="--where")
        key, value = item.split("=", 1)
        metadata[key] = value
    flt = Filter(group_id=group_id, tags=list(tags), metadata=metadata,
                 path_prefix=str(Path(path_prefix).expanduser().resolve()) if path_prefix else None)
    return None if flt.is_empty() else flt


@cli.command()
@click.argument("query", required=False)
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 10_000), help="Results to return.")
@collection_option
@click.option("--text", "-t", default=None, help="Search by a text description instead of an image.")
@click.option("--id", "image_id", type=int, default=None, help="More like the indexed image with this id.")
@click.option("--group", "group_id", default=None, help="Only images with this group id.")
@click.option("--tag", "tags", multiple=True, help="Only images carrying this tag (repeatable).")
@click.option("--where", multiple=True, help="Only images whose metadata KEY equals VALUE (KEY=VALUE).")
@click.option("--under", "path_prefix", default=None, help="Only images under this folder.")
@click.option("--min-score", type=float, default=None, help="Drop results scoring below this.")
@click.option("--no-expand", "no_expand", is_flag=True,
              help="Plain cosine ranking: skip query expansion (the collection's DBA still applies).")
@click.option("--rotation-invariant", is_flag=True,
              help="Also find copies rotated by 90/180/270 degrees (embeds the query 4 times).")
@click.option("--copies", is_flag=True,
              help="Only images verified as copies of the query; score = copy confidence in [0, 1].")
@click.option("--objects", is_flag=True,
              help="Also search with each object/region found in the query; best region per image wins.")
@click.option("--box", default=None, metavar="X0,Y0,X1,Y1",
              help="Search with this region of the query picture only (pixels from the top-left corner).")
@json_option
@click.pass_context
def search(ctx: click.Context, query: str | None, k: int, collection: str, text: str | None,
           image_id: int | None, group_id: str | None, tags: tuple[str, ...], where: tuple[str, ...],
           path_prefix: str | None, min_score: float | None, no_expand: bool, rotation_invariant: bool,
           copies: bool, objects: bool, box: str | None, as_json: bool) -> None:
    """Find images like QUERY (an image file, '-' for stdin), like --id, or like --text."""
    given = sum(x is not None and x != "" for x in (query, text, image_id))
    if given != 1:
        raise click.UsageError("give exactly one of QUERY, --id or --text")
    lib = _library(ctx)
    flt = _parse_filters(group_id, tags, where, path_prefix)
    target: Any = image_id
    if query == "-":
        target = sys.stdin.buffer.read()
    elif query:
        path = Path(query).expanduser()
        if not path.is_file():
            raise LookalikeError(f"query image '{query}' does not exist or is not a file")
        target = path
    if (objects or box is not None) and (text or copies):
        raise LookalikeError("--objects and --box search with a picture: not with --text or --copies")
    hits = lib.search(target, k=k, collection=collection, text=text or None, flt=flt, min_score=min_score,
                      expand=not no_expand, rotation_invariant=rotation_invariant, copies=copies,
                      objects=objects, box=box)
    if as_json:
        # results first: tools that read the first file names of the output get the hits, not the query
        _emit({"collection": collection, "results": [h.to_dict() for h in hits],
               "query": query if query and query != "-" else
               ({"id": image_id} if image_id is not None else {"text": text} if text else "stdin")})
        return
    from rich.table import Table

    table = Table(show_edge=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("id", justify="right")
    table.add_column("path", overflow="fold")
    boxes = any(getattr(h, "box", None) or getattr(h, "query_box", None) for h in hits)
    if boxes:
        table.add_column("box")
    for rank, hit in enumerate(hits, 1):
        row = [str(rank), f"{hit.score:.4f}", str(hit.id), hit.path]
        if boxes:
            where_ = getattr(hit, "box", None) or getattr(hit, "query_box", None)
            row.append(",".join(map(str, where_)) if where_ else "whole")
        table.add_row(*row)
    _console().print(table)


@cli.command()
@click.argument("first")
@click.argument("second")
@click.option("--collection", "-c", default=None,
              help="Use this collection's model; FIRST/SECOND may then be ids of its images.")
@click.option("--model", "-m", default=None, help="Embedder to compare with (default: the library's).")
@json_option
@click.pass_context
def compare(ctx: click.Context, first: str, second: str, collection: str | None, model: str | None,
            as_json: bool) -> None:
    """How alike two images are: a score in [0, 1] and a verdict (duplicate, similar or different).

    FIRST and SECOND are image files ('-' for stdin), or with --collection the ids of indexed images."""
    lib = _library(ctx)
    result = lib.compare(_image_argument(first, collection), _image_argument(second, collection),
                         collection=collection, model=model)
    if as_json:
        _emit({"a": first, "b": second, **result.to_dict()})
    else:
        click.echo(f"{result.verdict} (score {result.score:.4f}, {result.model})")


@cli.command()
@collection_option
@click.option("--keep", default="best", show_default=True,
              help="Which picture of a group to keep: best, largest, oldest or path:PATTERN.")
@click.option("--move-to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Plan to move the other pictures of each group into this folder.")
@click.option("--delete", is_flag=True, help="Plan to delete them (into the library's trash; undoable).")
@click.option("--symlink", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Plan to move them into this folder, leaving a link to the kept picture in their place.")
@click.option("--apply", "apply_", is_flag=True, help="Carry out the plan (without it: a dry run).")
@click.option("--undo", "undo_manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Put back everything the run that wrote this manifest did.")
@click.option("--not-duplicates", "not_duplicates", nargs=2, default=None, metavar="A B",
              help="Remember that A and B (files or ids) are not copies: never grouped again.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the groups as CSV.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a page to review the groups side by side.")
@json_option
@click.pass_context
def dupes(ctx: click.Context, collection: str, keep: str, move_to: Path | None, delete: bool,
          symlink: Path | None, apply_: bool, undo_manifest: Path | None, not_duplicates: tuple[str, str] | None,
          csv_file: Path | None, html_file: Path | None, as_json: bool) -> None:
    """Groups of copies (resized, cropped, turned, re-encoded...) in a collection, and what to do with them.

    Without an action: the groups with their evidence. With --move-to/--delete/--symlink: the plan
    (a dry run) unless --apply. Every applied run writes a manifest that --undo restores."""
    if sum(x is not None and x is not False for x in (move_to, delete or None, symlink)) > 1:
        raise click.UsageError("give at most one of --move-to, --delete and --symlink")
    lib = _library(ctx)
    if undo_manifest is not None:
        result = lib.dupes_undo(undo_manifest)
        if as_json:
            _emit(result.to_dict())
        else:
            click.echo(f"restored {len(result.restored)} file(s)")
            for p, why in result.skipped:
                click.echo(f"  not restored {p}: {why}", err=True)
        return
    if not_duplicates is not None:
        added = lib.not_duplicates([_image_argument(x, collection) for x in not_duplicates], collection)
        if as_json:
            _emit({"not_duplicates": list(not_duplicates), "new_pairs": added})
        else:
            click.echo(f"remembered: {not_duplicates[0]} and {not_duplicates[1]} are not duplicates")
        return
    from .dupes import report as dupes_report

    bar = None
    progress_fn = None
    if not as_json and sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       transient=True)
        task = bar.add_task("candidates", total=None)
        bar.start()

        def progress_fn(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total)
    try:
        report = lib.dupes(collection, progress=progress_fn)
    finally:
        if bar is not None:
            bar.stop()
    if csv_file:
        csv_file.write_text(dupes_report.to_csv(report))
    if html_file:
        html_file.write_text(dupes_report.to_html(report))
    mode = "move" if move_to else "delete" if delete else "symlink" if symlink else None
    if mode is None:
        if apply_:
            raise click.UsageError("--apply needs an action: --move-to DIR, --delete or --symlink DIR")
        if as_json:
            _emit(report.to_dict())
        else:
            click.echo(dupes_report.to_text(report))
        return
    plan = lib.dupes_plan(report, keep=keep, mode=mode, target=move_to or symlink)
    if apply_:
        lib.dupes_apply(plan, collection)
    if as_json:
        _emit({**report.to_dict(), "plan": plan.to_dict()})
    else:
        click.echo(plan.describe())


def _image_argument(raw: str, collection: str | None) -> Any:
    """A file path, '-' (stdin bytes), or, with a collection, the id of one of its images."""
    if raw == "-":
        return sys.stdin.buffer.read()
    path = Path(raw).expanduser()
    if path.is_file():
        return path
    if collection and raw.isdigit():
        return int(raw)
    raise LookalikeError(f"image '{raw}' does not exist or is not a file"
                         + ("" if collection else "; to compare indexed images by id, add --collection"))


@cli.command()
@click.option("--collection", "-c", default=None, help="Describe one collection (default: the whole library).")
@json_option
@click.pass_context
def info(ctx: click.Context, collection: str | None, as_json: bool) -> None:
    """Counts, model, index type and size on disk."""
    lib = _library(ctx)
    if collection:
        data = lib.info(collection).to_dict()
        data["home"] = str(lib.home)
    else:
        items = [c.to_dict() for c in lib.collections()]
        data = {"home": str(lib.home), "count": sum(c["count"] for c in items), "collections": items}
    if as_json:
        _emit(data)
        return
    rows = [data] if collection else data["collections"]
    click.echo(f"library: {lib.home}")
    if not rows:
        click.echo("no collections yet: `lookalike index PATH` creates one")
    for c in rows:
        refine = c["settings"].get("refine") or {}
        how = (f"DBA over {refine.get('dba_k', 0)}, query expansion over {refine.get('qe_k', 0)}"
               if refine.get("dba_k") or refine.get("qe_k") else "plain cosine")
        click.echo(f"{c['name']}: {c['count']} images, model {c['model']} ({c['dim']}-d {c['metric']}), "
                   f"index {c['index_type']}, {how}, {_human_bytes(c['size_bytes'])} on disk")


@cli.command()
@click.argument("targets", nargs=-1, required=True)
@collection_option
@json_option
@click.pass_context
def remove(ctx: click.Context, targets: tuple[str, ...], collection: str, as_json: bool) -> None:
    """Remove images by path, folder or id."""
    removed = _library(ctx).remove(list(targets), collection)
    if as_json:
        _emit({"collection": collection, "removed": removed})
    else:
        click.echo(f"removed {removed} image(s) from {collection}")


@cli.group(invoke_without_command=True)
@json_option
@click.pass_context
def collections(ctx: click.Context, as_json: bool) -> None:
    """List, create and drop collections."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_collections, as_json=as_json)


@collections.command("list")
@json_option
@click.pass_context
def list_collections(ctx: click.Context, as_json: bool) -> None:
    """List collections."""
    items = [c.to_dict() for c in _library(ctx).collections()]
    if as_json:
        _emit({"collections": items, "count": sum(c["count"] for c in items)})
        return
    for c in items:
        click.echo(f"{c['name']}\t{c['count']}\t{c['model']}\t{c['index_type']}")


@collections.command("create")
@click.argument("name")
@click.option("--model", "-m", default=None, help="Embedder for this collection.")
@click.option("--index-spec", default="auto", show_default=True,
              help="auto, a Faiss index_factory string, or LSH<bits>: binary codes, exact re-rank.")
@click.option("--plain", is_flag=True, help="No refinement: plain cosine search (no DBA, no query expansion).")
@json_option
@click.pass_context
def create_collection(ctx: click.Context, name: str, model: str | None, index_spec: str, plain: bool,
                      as_json: bool) -> None:
    """Create an empty collection."""
    info_ = _library(ctx).create_collection(name, model, index_spec, refine=not plain)
    if as_json:
        _emit(info_.to_dict())
    else:
        click.echo(f"created {name} ({info_.model}, {info_.dim}-d)")


@collections.command("refine")
@click.argument("name")
@click.option("--dba-k", type=click.IntRange(0, 32), default=None,
              help="Neighbours averaged into each stored vector (0: off; default 4).")
@click.option("--qe-k", type=click.IntRange(0, 64), default=None,
              help="Top hits a query is expanded with (0: off; default 5).")
@click.option("--off", is_flag=True, help="Turn refinement off: plain cosine search.")
@json_option
@click.pass_context
def refine_collection(ctx: click.Context, name: str, dba_k: int | None, qe_k: int | None, off: bool,
                      as_json: bool) -> None:
    """Change a collection's refinement and recompute it (only the vectors the index searches change)."""
    params = _library(ctx).set_refinement(name, dba_k=dba_k, qe_k=qe_k, off=off)
    if as_json:
        _emit({"collection": name, "refine": params.to_settings()["refine"]})
    else:
        click.echo(f"{name}: DBA over {params.dba_k} neighbours, query expansion over {params.qe_k} hits"
                   if params.dba_k or params.qe_k else f"{name}: plain cosine search")


@collections.command("drop")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_context
def drop_collection(ctx: click.Context, name: str, yes: bool, as_json: bool) -> None:
    """Drop a collection and everything indexed in it."""
    lib = _library(ctx)
    if not yes and not as_json and sys.stdin.isatty():
        click.confirm(f"drop '{name}' with {lib.count(name)} images?", abort=True)
    count = lib.drop_collection(name)
    if as_json:
        _emit({"dropped": name, "count": count})
    else:
        click.echo(f"dropped {name} ({count} images)")


@cli.command()
@json_option
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List the available embedders."""
    lib = _library(ctx)
    default = lib.default_model
    cards = [c.to_dict() for c in lib.models()]
    if as_json:
        _emit({"default": default, "models": cards})
        return
    from rich.table import Table

    table = Table(show_edge=False)
    for col in ("name", "dim", "metric", "input", "text", "local", "int8 cost", "licence", "source"):
        table.add_column(col, overflow="fold", no_wrap=col == "name")
    for c in cards:
        name = c["name"] + (" (default)" if c["name"] == default else "")
        table.add_row(name, str(c["dim"]), c["metric"], str(c["input_size"]), "yes" if c["text"] else "no",
                      "yes" if c["available"] else "no", str(c["extra"].get("int8", "-")), c["licence"],
                      c["source"])
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 250).print(table)  # piped: one line per model, greppable
    from .cli_train import print_trained

    print_trained(cards)


@cli.command()
@click.argument("model", required=False)
@click.option("--module", "module_spec", default=None,
              help="Export any torch module instead: MODULE:CALLABLE returning an nn.Module.")
@click.option("--input-shape", default="1,3,224,224", show_default=True, help="Example input shape for --module.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ONNX file to write (--module); named models go to the library's models dir.")
@click.option("--random-weights", is_flag=True, help="Build without downloading weights (to check the export).")
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Largest allowed torch/ONNX difference.")
@json_option
@click.pass_context
def export(ctx: click.Context, model: str | None, module_spec: str | None, input_shape: str, out: Path | None,
           random_weights: bool, atol: float, as_json: bool) -> None:
    """Export a torch model (CLIP/timm by name, or --module) to ONNX, checked against torch."""
    from .embed import export as ex

    if (model is None) == (module_spec is None):
        raise click.UsageError("give a MODEL name (see `lookalike models`) or --module MODULE:CALLABLE")
    if module_spec:
        torch = ex.require_torch()
        shape = tuple(int(v) for v in input_shape.split(","))
        target = out or Path(module_spec.replace(":", "_").replace(".", "_") + ".onnx")
        report = ex.export_module(ex.load_callable(module_spec), torch.randn(*shape), target,
                                  input_names=["input"], output_names=["output"], atol=atol)
        result = {"path": str(report.path), "max_abs_diff": report.max_abs_diff, "output_shape": report.shapes}
    else:
        from .embed import torch_models

        spec = next((s for s in torch_models.BUILTIN if s.name == model), None)
        if spec is None:
            raise LookalikeError(f"'{model}' is not a torch model; choose one of "
                                 + ", ".join(s.name for s in torch_models.BUILTIN))
        built = torch_models.build(spec, _library(ctx).model_dir, pretrained=not random_weights)
        result = {"path": str(built.image_onnx), "text_path": str(built.text_onnx) if built.text_onnx else None,
                  "dim": built.dim, "max_abs_diff": built.max_abs_diff}
    if as_json:
        _emit(result)
    else:
        click.echo(f"wrote {result['path']} (max |torch - onnx| = {result['max_abs_diff']})")


@cli.command()
@click.argument("collection")
@click.option("--to", "to", required=True, metavar="STORE_URI",
              help="Store to copy into: milvus:PATH.db, milvus:http://HOST:19530 or embedded.")
@click.option("--from", "source", default=None, metavar="STORE_URI",
              help="Store to copy from (default: --store / $LOOKALIKE_STORE, else embedded).")
@click.option("--batch", type=click.IntRange(1), default=1000, show_default=True, help="Rows per write.")
@json_option
@click.pass_context
def migrate(ctx: click.Context, collection: str, to: str, source: str | None, batch: int, as_json: bool) -> None:
    """Copy a collection to another store: vectors, rows (ids kept) and refinement, no re-embedding.
    Resumable: after a kill, run the same command again. Verified by counts and sampled vectors."""
    if source:
        ctx.obj["store"] = source
    lib = _library(ctx)

    def progress(done: int, total: int) -> None:
        click.echo(f"migrate {collection}: {done}/{total} rows", err=True)
    report = lib.migrate(collection, to, batch=batch, progress=progress)
    if as_json:
        _emit(report.to_dict())
        return
    click.echo(f"{collection}: {report.copied} rows copied to {to}, {report.already_there} already there; "
               f"{report.count} rows, {report.verified} sampled rows identical ({report.seconds:.1f} s)")


@cli.command()
@click.option("--host", default=None, help="Address to listen on (env LOOKALIKE_HOST; default 127.0.0.1).")
@click.option("--port", "-p", type=click.IntRange(0, 65535), default=None,
              help="Port to listen on (env LOOKALIKE_PORT; default 8000).")
@click.option("--api-key", default=None,
              help="Require this key (X-API-Key header) for write endpoints; prefer env LOOKALIKE_API_KEY.")
@click.option("--cors-origins", default=None, help="Comma-separated origins allowed to call the API from a "
              "browser, or '*' (env LOOKALIKE_CORS_ORIGINS).")
@click.option("--allowed-root", "allowed_roots", multiple=True, type=click.Path(file_okay=False),
              help="Server-side folder the index endpoint may read (repeatable; env LOOKALIKE_ALLOWED_ROOTS).")
@click.option("--max-upload-bytes", type=click.IntRange(1), default=None,
              help="Largest accepted image upload (env LOOKALIKE_MAX_UPLOAD_BYTES; default 20 MiB).")
@click.option("--log-format", type=click.Choice(["json", "text"]), default=None,
              help="Log lines as JSON objects (default) or text (env LOOKALIKE_LOG_FORMAT).")
@click.option("--workers", "-w", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Server processes sharing the port and the library (each loads its own models).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, api_key: str | None, cors_origins: str | None,
          allowed_roots: tuple[str, ...], max_upload_bytes: int | None, log_format: str | None,
          workers: int) -> None:
    """Run the HTTP API and web page (API docs at /docs); stop with Ctrl-C."""
    from .server import serve as run_server

    if ctx.obj.get("store"):  # the environment, so that every process of the server opens the same store
        os.environ["LOOKALIKE_STORE"] = ctx.obj["store"]
    run_server(ctx.obj.get("home"), host=host, port=port, api_key=api_key, cors_origins=cors_origins,
               allowed_roots=list(allowed_roots) or None, max_upload_bytes=max_upload_bytes,
               log_format=log_format, workers=workers)


@cli.command("eval")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "-m", "models", multiple=True,
              help="Model to measure (repeatable; default: the default). Add ':plain' for plain cosine search "
                   "without refinement, e.g. -m default -m default:plain.")
@click.option("--truth", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Ground-truth JSON {query_id: [relevant_ids]} (ids relative to DATASET).")
@click.option("--captions", "captions_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Captions CSV (image,caption) for text-to-image evaluation.")
@click.option("-k", "ks", multiple=True, type=click.IntRange(1, 1000), help="Cut-offs (default 1 5 10 20).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N queries.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("eval-report"),
              show_default=True, help="Folder for eval.json, eval.md and recall_at_k.png.")
@click.option("--html", "with_html", is_flag=True, help="Also write worst.html: the worst queries with thumbnails.")
@json_option
@click.pass_context
def eval_command(ctx: click.Context, dataset: Path, models: tuple[str, ...], truth: Path | None,
                 captions_csv: Path | None, ks: tuple[int, ...], limit: int | None, out_dir: Path,
                 with_html: bool, as_json: bool) -> None:
    """Measure retrieval quality on a labelled DATASET (class folders, UKBench, ground truth or captions)."""
    from .eval import load
    from .eval.report import headline_columns, to_json, write_all
    from .eval.runner import DEFAULT_KS, evaluate, open_eval_library

    lib = _library(ctx)
    eval_set = load(str(dataset), truth=truth, captions_csv=captions_csv)
    eval_lib = open_eval_library(lib.home / "eval", lib.model_dir)
    try:
        results = [evaluate(eval_lib, eval_set, model, ks=tuple(sorted(ks)) or DEFAULT_KS, limit=limit)
                   for model in (models or (lib.settings.model,))]
    finally:
        eval_lib.close()
    command = "lookalike eval " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else ""
    files = write_all(out_dir, eval_set, results, command=command, with_html=with_html)
    if as_json:
        _emit({**to_json(eval_set, results, per_query=False), "files": files})
        return
    from rich.table import Table

    cols = [c for c in headline_columns(results) if not c.startswith(("precision", "nDCG"))][:7]
    table = Table(title=f"{eval_set.name}: {len(eval_set.images)} images, {len(results[0].queries)} queries")
    for col in ("model", *cols, "p50 ms"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        table.add_row(r.model, *[f"{r.metrics[c]:.4f}" if r.metrics.get(c) is not None else "-" for c in cols],
                      f"{r.latency_ms['p50']:.2f}")
    _console().print(table)
    click.echo("reports: " + ", ".join(files.values()))


from .cli_train import train as _train  # noqa: E402 - `lookalike train` (issue 16) lives in its own module

cli.add_command(_train)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and exit code 1."""
    try:
        cli.main(args=argv, prog_name="lookalike", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except LookalikeError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
