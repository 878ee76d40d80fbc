"""Vector stores side by side on the same vectors: insert rate, recall@10 against exact search, p50/p99
search latency and bytes per vector, in one run and one table, with ratios to the exact embedded store.

    nice -n 10 python bench/stores.py [--count 100000] [--queries 200] [--cache DIR]
                                      [--stores flat,ivf,sq8,lsh256,milvus-lite] [--json]

Vectors (2304-d, the default model's width): the real features of the shared images (UKBench, flowers,
Flickr8k: 3000 pictures, embedded once with the default model into a library under --cache and read back
from it later), topped up to --count with image-like synthetic vectors: Gaussian clusters of about 20
drawn with the real features' principal spectrum (leading 256 axes, an isotropic rest), their spread
within a cluster set to that of UKBench's groups of four views of one object. Queries: half held-out real
features (never inserted), half fresh draws from the synthetic clusters. Truth: exact inner product over
the inserted vectors (Faiss IndexFlatIP).

Each store gets the same vectors, in batches of --batch, through its own API, and the insert rate counts
everything until the store can answer: for the embedded store `Store.upsert` then `flush` (catalogue rows,
IVF or code training, the index file); for Milvus Lite `MilvusClient.insert`, `flush`, `create_index` and
`load_collection`. Latency: one query per call (k=10), as a server searches. Bytes per vector: `index` is
the Faiss index file (what a process holds in memory for it), `disk` everything the store wrote. The
embedded store also keeps every float vector in its SQLite catalogue (on disk, read back to re-rank LSH
shortlists and to rebuild an index).

A target is (name, store URI, index): `embedded:<Faiss spec>` goes through lookalike's Store interface,
`milvus-lite:<INDEX>` through pymilvus' MilvusClient directly (until a Milvus Store backend exists; then a
`store:<URI>` target can run it through `open_store` like the embedded one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
REAL_SETS = ("ukbench_first1000", "tf_flowers_1000", "flickr8k_1000")
DIM = 2304
K = 10


@dataclass(frozen=True)
class Target:
    name: str
    uri: str  # "embedded:<Faiss spec>" or "milvus-lite:<index type>"


TARGETS = {
    "flat": Target("Flat (exact)", "embedded:Flat"),
    "ivf": Target("IVF", "embedded:IVF{nlist},Flat"),
    "sq8": Target("IVF + SQ8", "embedded:IVF{nlist},SQ8"),
    "pq": Target("IVF + PQ (288 B)", "embedded:IVF{nlist},PQ288"),
    "lsh256": Target("LSH256 + re-rank", "embedded:LSH256"),
    "lsh512": Target("LSH512 + re-rank", "embedded:LSH512"),
    "milvus-lite": Target("Milvus Lite", "milvus-lite:IVF_FLAT"),
}


# -- the vectors --------------------------------------------------------------------------------
def real_features(cache: Path) -> np.ndarray:
    """The shared images' vectors from the default model, embedded once into the library at `cache`."""
    from lookalike import Library

    saved = cache / "real_features.npy"
    if saved.exists():
        return np.load(saved)
    lib = Library.open(cache)
    parts = []
    try:
        for folder in REAL_SETS:
            collection = folder.split("_")[0]
            print(f"embedding {folder} (once; cached in {cache})", file=sys.stderr, flush=True)
            lib.index([SHARED / folder], collection)
            parts.append(lib.store.all_vectors(collection)[1])
    finally:
        lib.close()
    vectors = np.concatenate(parts).astype(np.float32)
    np.save(saved, vectors)
    return vectors


def synthetic_like(real: np.ndarray, n: int, rng: np.random.Generator, *, per_cluster: int = 20,
                   axes: int = 256) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """`n` unit vectors in clusters of about `per_cluster`, with the real features' spectrum; also returns one
    more draw from each of a random set of clusters (queries) and the figures the draw used."""
    mean = real.mean(axis=0)
    centred = real - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    spread = singular / np.sqrt(len(real) - 1)  # standard deviation along each principal axis
    lead, basis = spread[:axes], vt[:axes]
    rest = float(np.sqrt((spread[axes:] ** 2).sum() / real.shape[1]))  # per dimension, isotropic
    groups = centred[: len(real) // 4 * 4].reshape(-1, 4, real.shape[1])[:250]  # UKBench: 4 views per object
    within = float(((groups - groups.mean(axis=1, keepdims=True)) ** 2).sum(-1).mean() * 4 / 3)
    share = within / float((centred ** 2).sum(-1).mean())

    def draw(rows: int, factor: float) -> np.ndarray:
        structured = (rng.standard_normal((rows, axes), dtype=np.float32) * (lead * factor)) @ basis
        return structured + rng.standard_normal((rows, real.shape[1]), dtype=np.float32) * (rest * factor)

    clusters = max(1, n // per_cluster)
    centres = mean + draw(clusters, np.sqrt(1 - share))
    members = rng.integers(0, clusters, n)
    vectors = centres[members] + draw(n, np.sqrt(share))
    queries = centres[rng.integers(0, clusters, n // 100 + 1)] + draw(n // 100 + 1, np.sqrt(share))
    unit = [(v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32) for v in (vectors, queries)]
    return unit[0], unit[1], {"clusters": clusters, "within_share": round(share, 3)}


def dataset(real: np.ndarray, count: int, queries: int, seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(real))
    held = order[: queries // 2]
    kept = real[order[queries // 2:]][:count]
    synthetic, fresh, figures = synthetic_like(real, count - len(kept), rng)
    base = np.concatenate([kept, synthetic])
    base = base[rng.permutation(len(base))]
    query = np.concatenate([real[held], fresh[: queries - len(held)]])
    return base, query, {**figures, "real_inserted": len(kept), "real_queries": len(held)}


def exact_truth(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return index.search(queries, K)[1]


# -- the stores ---------------------------------------------------------------------------------
class Embedded:
    """lookalike's embedded store (SQLite catalogue + Faiss) through its Store interface."""

    def __init__(self, folder: Path, spec: str) -> None:
        from lookalike.store import EmbeddedStore

        self.folder = folder
        self.spec = spec
        self.store = EmbeddedStore(folder)
        self.store.create_collection("bench", "bench", DIM, index_spec=spec)
        self.ids: list[int] = []

    def insert(self, vectors: np.ndarray, first: int) -> None:
        from lookalike.store import ImageRecord

        records = [ImageRecord(path=f"/bench/{first + i}.jpg") for i in range(len(vectors))]
        self.ids += self.store.upsert("bench", records, vectors)

    def finish(self) -> str:
        self.store.flush()
        return self.store.collection("bench").index_type

    def search(self, query: np.ndarray) -> list[int]:
        _, found = self.store.search("bench", query[None, :], K)
        return found[0].tolist()

    def position(self, found: list[int]) -> list[int]:
        """Store ids -> rows of the inserted array."""
        if not hasattr(self, "_row"):
            self._row = {i: n for n, i in enumerate(self.ids)}
        return [self._row.get(i, -1) for i in found]

    def sizes(self) -> tuple[int, int]:
        index = sum(p.stat().st_size for p in (self.folder / "indexes").glob("bench.*.faiss"))
        disk = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
        return index, disk

    def close(self) -> None:
        self.store.close()


class MilvusLite:
    """Milvus Lite through pymilvus' MilvusClient: one collection, int64 ids, an IP index."""

    def __init__(self, folder: Path, index_type: str, count: int) -> None:
        from pymilvus import DataType, MilvusClient

        self.folder = folder
        self.client = MilvusClient(str(folder / "milvus.db"))
        schema = self.client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
        self.client.create_collection("bench", schema=schema)
        self.index_type = index_type
        self.nlist = nlist_for(count)
        self.search_params = {"params": {"nprobe": nprobe_for(self.nlist), "ef": 128}}

    def insert(self, vectors: np.ndarray, first: int) -> None:
        self.client.insert("bench", [{"id": first + i, "vector": v} for i, v in enumerate(vectors)])

    def finish(self) -> str:
        params = self.client.prepare_index_params()
        extra = {"nlist": self.nlist} if self.index_type.startswith("IVF") else {}
        if self.index_type == "HNSW":
            extra = {"M": 16, "efConstruction": 128}
        params.add_index("vector", index_type=self.index_type, metric_type="IP", params=extra)
        self.client.flush("bench")  # seal the growing segments: only sealed ones get the index
        self.client.create_index("bench", params)
        self.client.load_collection("bench")
        return f"{self.index_type} " + ",".join(f"{k}={v}" for k, v in {**extra, **self.search_params["params"]}.items()
                                                if k != "ef" or self.index_type == "HNSW")

    def search(self, query: np.ndarray) -> list[int]:
        # no output_fields: asking for "id" makes Milvus Lite fetch the entity (5x slower per query)
        hits = self.client.search("bench", data=[query.tolist()], limit=K, search_params=self.search_params)
        return [int(h["id"]) for h in hits[0]]

    def position(self, found: list[int]) -> list[int]:
        return found

    def sizes(self) -> tuple[int, int]:
        disk = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
        return 0, disk

    def close(self) -> None:
        self.client.close()


def nlist_for(count: int) -> int:
    """The list count lookalike's auto index picks for this many vectors (faiss_index._nlist)."""
    from lookalike.store.faiss_index import _nlist

    return _nlist(count)


def nprobe_for(nlist: int) -> int:
    from lookalike.store.faiss_index import _nprobe

    return _nprobe(nlist)


def open_target(target: Target, folder: Path, count: int) -> Embedded | MilvusLite:
    kind, _, what = target.uri.partition(":")
    what = what.format(nlist=nlist_for(count))
    if kind == "embedded":
        return Embedded(folder, what)
    if kind == "milvus-lite":
        return MilvusLite(folder, what, count)
    raise SystemExit(f"unknown store kind '{kind}' in {target.uri}")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def measure(target: Target, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, batch: int,
            work: Path) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=target.uri.split(":")[0] + "-", dir=work))
    store = open_target(target, folder, len(base))
    try:
        started = time.perf_counter()
        for first in range(0, len(base), batch):
            store.insert(base[first:first + batch], first)
        index_type = store.finish()
        insert_seconds = time.perf_counter() - started
        store.search(queries[0])  # first-search costs (loading, caches) are not a search's
        latencies, recalls = [], []
        for query, expected in zip(queries, truth, strict=True):
            t = time.perf_counter()
            found = store.search(query)
            latencies.append((time.perf_counter() - t) * 1000)
            recalls.append(len(set(store.position(found)) & set(expected.tolist())) / K)
        index_bytes, disk_bytes = store.sizes()
    finally:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)
    return {"store": target.name, "uri": target.uri.format(nlist=nlist_for(len(base))), "index": index_type,
            "insert_per_s": round(len(base) / insert_seconds), "insert_seconds": round(insert_seconds, 1),
            "recall_at_10": round(float(np.mean(recalls)), 3),
            "recall_real": round(float(np.mean(recalls[: len(queries) // 2])), 3),
            "recall_synthetic": round(float(np.mean(recalls[len(queries) // 2:])), 3),
            "p50_ms": round(percentile(latencies, 50), 2), "p99_ms": round(percentile(latencies, 99), 2),
            "index_bytes_per_vector": round(index_bytes / len(base), 1),
            "disk_bytes_per_vector": round(disk_bytes / len(base), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="vectors inserted into each store")
    parser.add_argument("--queries", type=int, default=200, help="queries (half real held-out, half synthetic)")
    parser.add_argument("--batch", type=int, default=1000, help="vectors per insert call")
    parser.add_argument("--stores", default="flat,ivf,sq8,lsh256,milvus-lite",
                        help="comma-separated, of: " + ", ".join(TARGETS))
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-bench-stores",
                        help="library folder the real features are embedded into once")
    parser.add_argument("--work", type=Path, default=None, help="folder for the stores (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    unknown = [s for s in args.stores.split(",") if s not in TARGETS]
    if unknown:
        sys.exit(f"unknown store {unknown[0]}; choose from {', '.join(TARGETS)}")

    started = time.perf_counter()
    real = real_features(args.cache)
    base, queries, figures = dataset(real, args.count, args.queries)
    truth = exact_truth(base, queries)
    prepared = time.perf_counter() - started
    work = Path(tempfile.mkdtemp(prefix="lookalike-stores-", dir=args.work))
    rows = []
    try:
        for name in args.stores.split(","):
            print(f"{name}: inserting {len(base)} vectors", file=sys.stderr, flush=True)
            rows.append(measure(TARGETS[name], base, queries, truth, args.batch, work))
            print(f"  {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    reference = next((r for r in rows if r["uri"] == "embedded:Flat"), rows[0])
    for r in rows:
        r["insert_ratio"] = round(r["insert_per_s"] / reference["insert_per_s"], 2)
        r["p50_ratio"] = round(r["p50_ms"] / reference["p50_ms"], 2) if reference["p50_ms"] else None
        r["index_bytes_ratio"] = (round(r["index_bytes_per_vector"] / reference["index_bytes_per_vector"], 3)
                                  if reference["index_bytes_per_vector"] and r["index_bytes_per_vector"] else None)
    if args.json:
        print(json.dumps({"machine": machine, "count": len(base), "dim": DIM, "queries": len(queries),
                          "data": figures, "prepare_seconds": round(prepared, 1), "rows": rows}, indent=2))
        return
    print(f"# {len(base)} vectors x {DIM}-d ({figures['real_inserted']} real + synthetic in "
          f"{figures['clusters']} clusters), {len(queries)} queries ({figures['real_queries']} real held-out), "
          f"k={K}, {machine}\n")
    print("| store | index | insert/s | recall@10 (real / synthetic) | p50 ms | p99 ms | index B/vector | "
          "disk B/vector | insert x | p50 x | index bytes x |")
    print("|--|--|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['store']} | {r['index']} | {r['insert_per_s']} | {r['recall_at_10']} ({r['recall_real']} / "
              f"{r['recall_synthetic']}) | {r['p50_ms']} | {r['p99_ms']} | {r['index_bytes_per_vector'] or '-'} | "
              f"{r['disk_bytes_per_vector']} | {r['insert_ratio']} | {r['p50_ratio']} | "
              f"{r['index_bytes_ratio'] or '-'} |")
    print(f"\nratios (x) are to {reference['store']}; vectors and truth prepared in {prepared:.0f} s.")


if __name__ == "__main__":
    main()
