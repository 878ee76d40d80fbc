"""Smaller vectors: PCA (with and without whitening), random projection and 8-bit scalar quantisation
of the index, against the full 2304-d default, on UKBench-1000 and tf_flowers_1000.

    python bench/reduction.py [--specs "Flat,PCA256,Flat,..."] [--model default]

Each variant is a Faiss `index_factory` spec, which is what `lookalike index --index-spec SPEC`
stores a collection with; the transform is learned from the collection itself, without labels. Each
set is embedded once; its vectors then go through the real store + refinement + search path for every
spec (plain = no refinement, refined = the default DBA + query expansion). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike import Library, refine
from lookalike.eval.metrics import average_precision
from lookalike.refine import RefineParams
from lookalike.store import ImageRecord

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SPECS = ["Flat", "PCA512,Flat", "PCA256,Flat", "PCA128,Flat", "PCAW256,Flat", "RR512,Flat", "RR256,Flat",
         "SQ8"]


def embed_set(lib: Library, files: list[Path], model: str) -> np.ndarray:
    embedder = lib.embedder(model)
    out = []
    for i in range(0, len(files), 32):
        out.append(embedder.embed_images([Image.open(f).convert("RGB") for f in files[i:i + 32]]))
    return np.concatenate(out)


def bytes_per_vector(spec: str, dim: int) -> int:
    head = spec.split(",")[0]
    if head == "SQ8":
        return dim
    digits = "".join(c for c in head if c.isdigit())
    return 4 * (int(digits) if digits and head != "Flat" else dim)


def score(lib: Library, name: str, vectors: np.ndarray, files: list[Path], kind: str, expand: bool) -> float:
    values = []
    for n, path in enumerate(files):
        hits = lib.search_vector(vectors[n], k=11, collection=name, expand=expand)
        names = [h.path for h in hits]
        if kind == "ukbench":  # N-S: group members in the top 4, query included
            values.append(sum(int(Path(p).stem[7:]) // 4 == int(path.stem[7:]) // 4 for p in names[:4]))
        else:  # mAP@10, query excluded; relevant = the other pictures of its class folder
            relevant = {str(p) for p in path.parent.glob("*.jpg")} - {str(path)}
            values.append(average_precision([p for p in names if p != str(path)], relevant, 10))
    return float(np.mean(values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", default=";".join(SPECS), help="';'-separated index_factory specs")
    ap.add_argument("--model", default="default")
    ap.add_argument("--models-dir", type=Path, default=None, help="model cache to reuse")
    args = ap.parse_args()
    sets = {"ukbench": sorted((SHARED / "ukbench_first1000").glob("*.jpg")),
            "flowers": sorted((SHARED / "tf_flowers_1000").glob("*/*.jpg"))}
    results: dict[tuple[str, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as home:
        lib = Library(Path(home), model_dir=args.models_dir)
        dim = 0
        for kind, files in sets.items():
            vectors = embed_set(lib, files, args.model)
            dim = vectors.shape[1]
            records = [ImageRecord(path=str(f)) for f in files]
            for n, spec in enumerate(args.specs.split(";")):
                for refined in (False, True):
                    name = f"{kind}-{n}-{int(refined)}"
                    settings = RefineParams().to_settings() if refined else {}
                    lib.store.create_collection(name, "bench", dim, index_spec=spec, settings=settings)
                    lib.store.upsert(name, records, vectors)
                    refine.refresh(lib.store, name)
                    results.setdefault((spec, kind), {})["refined" if refined else "plain"] = score(
                        lib, name, vectors, files, kind, refined)
                    lib.drop_collection(name)
        lib.close()
    print(f"model {args.model}, {dim}-d; every image of each set is a query; transforms learned on the set itself")
    print("| index spec | bytes/vector in the index | UKBench N-S plain / refined | flowers mAP@10 plain / refined |")
    print("|---|---|---|---|")
    for spec in args.specs.split(";"):
        uk, fl = results[(spec, "ukbench")], results[(spec, "flowers")]
        print(f"| `{spec}` | {bytes_per_vector(spec, dim)} | {uk['plain']:.3f} / {uk['refined']:.3f} "
              f"| {fl['plain']:.3f} / {fl['refined']:.3f} |")


if __name__ == "__main__":
    main()
