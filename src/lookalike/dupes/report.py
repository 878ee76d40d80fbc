"""A dupes report as text, CSV or a self-contained HTML page to review the groups side by side."""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path

from .groups import DupesReport


def to_text(report: DupesReport) -> str:
    lines = []
    for n, g in enumerate(report.groups, 1):
        lines.append(f"group {n}: {len(g.images)} images")
        for r in g.images:
            lines.append(f"  {r.id:>7}  {r.width}x{r.height}  {r.size:>9} B  {r.path}")
        for e in g.evidence:
            c = e.comparison
            lines.append(f"    {e.a} ~ {e.b}: score {c.score:.3f} by {c.check}"
                         + (f", {c.inliers} inliers, ncc {c.ncc:.3f}" if c.check == "geometry" else ""))
    s = report.to_dict()["stats"]
    lines.append(f"{s['groups']} group(s), {s['images_in_groups']} of {s['images']} images; "
                 f"{s['candidate_pairs']} candidate pairs, {s['verified_pairs']} verified, "
                 f"{s['exact_pairs']} exact; {s['seconds'].get('total', 0):.1f} s"
                 + (f"; {report.left_out} resolved group(s) left out" if report.left_out else ""))
    if report.skipped:
        lines.append(f"{len(report.skipped)} image(s) could not be read and were skipped (see --json)")
    return "\n".join(lines)


def to_csv(report: DupesReport) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["group", "id", "path", "width", "height", "size", "mtime", "content_hash", "best_score"])
    for n, g in enumerate(report.groups, 1):
        best = {}
        for e in g.evidence:
            for i in (e.a, e.b):
                best[i] = max(best.get(i, 0.0), e.comparison.score)
        for r in g.images:
            w.writerow([n, r.id, r.path, r.width, r.height, r.size, r.mtime, r.content_hash,
                        f"{best.get(r.id, 0.0):.4f}"])
    return out.getvalue()


def to_html(report: DupesReport) -> str:
    """One row of pictures per group (file:// links, so open it on the machine that holds them)."""
    parts = ["<!doctype html><meta charset='utf-8'><title>lookalike dupes</title>",
             "<style>body{font:14px sans-serif;margin:1em}.g{border-top:1px solid #ccc;padding:.5em 0}"
             "figure{display:inline-block;margin:.3em;vertical-align:top;max-width:260px}"
             "img{max-width:250px;max-height:250px;display:block}figcaption{font-size:12px;word-break:break-all}"
             "</style>", f"<h1>{len(report.groups)} group(s) of copies in {html.escape(report.collection)}</h1>"]
    for n, g in enumerate(report.groups, 1):
        parts.append(f"<div class='g'><h3>group {n}</h3>")
        for r in g.images:
            uri = html.escape(Path(r.path).absolute().as_uri()) if Path(r.path).is_absolute() else ""
            parts.append(f"<figure><img loading='lazy' src='{uri}' alt=''><figcaption>#{r.id} {r.width}x{r.height}"
                         f" {r.size} B<br>{html.escape(r.path)}</figcaption></figure>")
        ev = "; ".join(f"{e.a}~{e.b}: {e.comparison.score:.3f} ({e.comparison.check})" for e in g.evidence)
        parts.append(f"<p>{html.escape(ev)}</p></div>")
    return "\n".join(parts)
