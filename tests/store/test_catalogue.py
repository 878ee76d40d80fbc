"""The catalogue on its own: what a vector backend other than Faiss relies on it for."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from lookalike.errors import StaleWrite
from lookalike.store import ImageRecord, catalogue
from lookalike.store.catalogue import Catalogue


def unit(rows: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def cat(tmp_path: Path) -> Catalogue:
    c = Catalogue(tmp_path)
    c.create_collection("c", "m", 8)
    return c


def test_the_catalogue_does_not_import_faiss() -> None:
    tree = ast.parse(Path(catalogue.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] == "faiss"}


def test_each_write_reports_and_logs_the_index_entries_it_changed(cat: Catalogue) -> None:
    vecs = unit(4)
    ids, change = cat.upsert("c", [ImageRecord(path=f"/{i}") for i in range(4)], vecs)
    assert change is not None and change.generation == 1 and change.remove == []
    assert change.add_ids.tolist() == ids and np.allclose(change.add_vectors, vecs)
    # ids[0]'s augmented vector used ids[1]: replacing ids[1] sends ids[0] back to its plain vector
    generation, change = cat.set_augmented("c", [ids[0]], unit(1, seed=1), [[(ids[1], 0.9)]])
    assert generation == 2 and change is not None and change.add_ids.tolist() == [ids[0]]
    same, moved = vecs[2:3], unit(1, seed=2)
    _, change = cat.upsert("c", [ImageRecord(path="/2", size=5), ImageRecord(path="/1")], np.concatenate([same, moved]))
    assert change is not None and change.remove == [ids[0], ids[1]]  # the unchanged /2 keeps its entry
    assert change.add_ids.tolist() == [ids[0], ids[1]] and np.allclose(change.add_vectors, [vecs[0], moved[0]])
    assert cat.pending("c") == ids
    removed, change = cat.remove("c", [ids[3], 999])
    assert removed == 1 and change is not None and change.add_ids.tolist() == []
    assert cat.remove("c", [999]) == (0, None)
    assert cat.changed_since("c", 1) == [ids[0], ids[1], ids[3], 999]
    assert cat.log_length_since("c", 3) == 2  # generation 4: the removal asked for ids[3] and 999


def test_folding_the_log_and_clearing_augmentation(cat: Catalogue) -> None:
    ids, _ = cat.upsert("c", [ImageRecord(path=f"/{i}") for i in range(3)], unit(3))
    state = cat.collection_state("c")
    with pytest.raises(StaleWrite):
        cat.set_augmented("c", ids[:1], unit(1), [[(ids[1], 0.5)]], if_generation=state.generation - 1)
    cat.fold_log("c", state.generation, created=state.created + 1)  # a namesake's index: ignored
    assert cat.log_length_since("c", 0) == 3
    cat.fold_log("c", state.generation, created=state.created)
    assert cat.log_length_since("c", 0) == 0 and cat.collection_state("c").log_floor == state.generation
    change = cat.clear_augmented("c")
    assert change.everything and change.generation == state.generation + 1
    assert cat.collection_state("c").log_floor == change.generation  # nothing before it can be replayed
