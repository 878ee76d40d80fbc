"""What one small write costs a large collection on disk, and what it costs another process to see it.

    python bench/update_cost.py [--n 100000] [--dim 2304] [--rounds 5]

Fills a collection with clustered random unit vectors (see search_latency.py), then times, per round:
- write: store one new vector and flush (what a server upload or `lookalike add` does; refinement
  excluded, bench/search_latency.py times that), with the bytes written under `indexes/`;
- reader: a second store that had the index loaded (another process, e.g. the server while the CLI
  indexes) runs its next search, which must first catch up with the write;
- cold open: a fresh store's first search (a new CLI process).
Prints a markdown table of medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from search_latency import clustered, upsert_all  # bench/ is on sys.path when a bench script runs

from lookalike.store import EmbeddedStore, ImageRecord


def index_bytes(home: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (home / "indexes").iterdir()}


def written(home: Path, before: dict[str, int]) -> int:
    """Bytes of index files created or rewritten since `before`."""
    return sum(p.stat().st_size for p in (home / "indexes").iterdir()
               if before.get(p.name) != p.stat().st_mtime_ns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    vecs = clustered(args.n + args.rounds, args.dim, seed=0)
    query = vecs[:1]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        writer = EmbeddedStore(home)
        writer.create_collection("c", "synthetic", args.dim)
        start = time.perf_counter()
        upsert_all(writer, "c", vecs[:args.n], prefix="/s")
        writer.flush()
        fill = time.perf_counter() - start
        reader = EmbeddedStore(home)
        reader.search("c", query, 10)
        rows: dict[str, list[float]] = {"write ms": [], "written MB": [], "reader ms": [], "cold ms": []}
        for r in range(args.rounds):
            before = index_bytes(home)
            t0 = time.perf_counter()
            new_id = writer.upsert("c", [ImageRecord(path=f"/s/new-{r}.jpg")], vecs[args.n + r:args.n + r + 1])[0]
            writer.flush()
            rows["write ms"].append((time.perf_counter() - t0) * 1000)
            rows["written MB"].append(written(home, before) / 1e6)
            t0 = time.perf_counter()
            _, ids = reader.search("c", vecs[args.n + r:args.n + r + 1], 1)
            rows["reader ms"].append((time.perf_counter() - t0) * 1000)
            if ids[0, 0] != new_id:
                raise SystemExit(f"the reader missed the write: top hit {ids[0, 0]}, expected {new_id}")
            t0 = time.perf_counter()
            fresh = EmbeddedStore(home)
            fresh.search("c", query, 10)
            rows["cold ms"].append((time.perf_counter() - t0) * 1000)
            fresh.close()
        print(f"{args.n} vectors of {args.dim}-d stored in {fill:.0f} s; medians of {args.rounds} rounds:\n")
        print("| " + " | ".join(rows) + " |")
        print("|" + "---|" * len(rows))
        print("| " + " | ".join(f"{statistics.median(v):.1f}" for v in rows.values()) + " |")
        reader.close()
        writer.close()


if __name__ == "__main__":
    main()
