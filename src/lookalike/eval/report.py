"""Evaluation outputs: terminal table, JSON, markdown, a recall@k plot and an HTML page of failures."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from .datasets import EvalSet
from .runner import ModelResult


def headline_columns(results: list[ModelResult]) -> list[str]:
    """N-S (if any), recall@k and mAP@k for every cut-off, precision/nDCG at the largest, full mAP, MRR."""
    keys = list(results[0].metrics) if results else []
    ks = sorted({int(k.split("@")[1]) for k in keys if k.startswith("recall@")})
    top = ks[-1] if ks else 10
    cols = ["N-S"] if "N-S" in keys else []
    cols += [f"recall@{k}" for k in ks] + [f"mAP@{k}" for k in ks]
    return cols + [f"precision@{top}", f"nDCG@{top}", "mAP", "MRR"]


def to_json(eval_set: EvalSet, results: list[ModelResult], *, per_query: bool = True) -> dict[str, Any]:
    return {
        "set": eval_set.name, "root": str(eval_set.root), "images": len(eval_set.images),
        "queries": len(results[0].queries) if results else 0, "kind": eval_set.kind,
        "models": [
            {**r.summary(), "recall_curve": r.recall_curve,
             **({"per_query": [q.__dict__ for q in r.queries]} if per_query else {})}
            for r in results
        ],
    }


def markdown(eval_set: EvalSet, results: list[ModelResult], command: str = "") -> str:
    cols = headline_columns(results)
    lines = [f"# Evaluation: {eval_set.name}", "",
             f"{len(eval_set.images)} images, {len(results[0].queries) if results else 0} {eval_set.kind} queries."]
    if command:
        lines += ["", f"Command: `{command}`"]
    lines += ["", "| model | " + " | ".join(cols) + " | search p50 ms | search p99 ms |",
              "|---" * (len(cols) + 3) + "|"]
    for r in results:
        vals = [f"{r.metrics[c]:.4f}" if r.metrics.get(c) is not None else "-" for c in cols]
        lat = r.latency_ms
        lines.append(f"| {r.model} | " + " | ".join(vals) + f" | {lat['p50']:.2f} | {lat['p99']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results: list[ModelResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for r in results:
        ks = list(range(1, len(r.recall_curve) + 1))
        ax.plot(ks, [v if v is not None else float("nan") for v in r.recall_curve], marker=".", label=r.model)
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _thumb(path: Path, size: int = 120) -> str:
    try:
        img = Image.open(path).convert("RGB")
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except OSError:
        return ""


def html_page(eval_set: EvalSet, results: list[ModelResult], worst: int = 20, shown: int = 8) -> str:
    """The worst queries of each model (lowest AP) with their top results: green relevant, red not."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>lookalike eval</title><style>",
             "body{font-family:sans-serif;margin:1em} .row{display:flex;gap:6px;align-items:flex-start;"
             "margin:8px 0;flex-wrap:wrap} figure{margin:0;text-align:center;font-size:11px} img{display:block;"
             "border:3px solid #ccc} .ok img{border-color:#2a2} .bad img{border-color:#c22} .q img{border-color:#226}"
             "</style></head><body>", f"<h1>Worst queries: {html.escape(eval_set.name)}</h1>"]
    for r in results:
        parts.append(f"<h2>{html.escape(r.model)}</h2>")
        ranked = sorted((q for q in r.queries if q.ap is not None), key=lambda q: q.ap)[:worst]
        for q in ranked:
            parts.append("<div class='row'>")
            if eval_set.kind == "text":
                parts.append(f"<figure class='q'><b>{html.escape(q.query)}</b><br>AP {q.ap:.3f}</figure>")
            else:
                parts.append(f"<figure class='q'><img src='{_thumb(eval_set.path(q.query))}'>query, AP {q.ap:.3f}"
                             "</figure>")
            for name, score in list(zip(q.ranked, q.scores, strict=False))[:shown]:
                cls = "ok" if name in q.relevant else "bad"
                parts.append(f"<figure class='{cls}'><img src='{_thumb(eval_set.path(name))}'>{score:.3f}</figure>")
            parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)


def write_all(out_dir: Path, eval_set: EvalSet, results: list[ModelResult], *, command: str = "",
              with_html: bool = False) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": out_dir / "eval.json", "markdown": out_dir / "eval.md", "plot": out_dir / "recall_at_k.png"}
    files["json"].write_text(json.dumps(to_json(eval_set, results), indent=1))
    files["markdown"].write_text(markdown(eval_set, results, command))
    plot(results, files["plot"], f"{eval_set.name}: recall@k")
    if with_html:
        files["html"] = out_dir / "worst.html"
        files["html"].write_text(html_page(eval_set, results))
    return {k: str(v) for k, v in files.items()}
