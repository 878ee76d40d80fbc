"""groups.py: copies grouped with their originals (with evidence), other photos of one object never."""

from __future__ import annotations

from pathlib import Path

from lookalike.dupes import Decisions, find_groups
from lookalike.dupes.groups import UnionFind

from .conftest import load


def names(report) -> list[set[str]]:
    return [{Path(r.path).name for r in g.images} for g in report.groups]


def test_copies_and_exact_duplicates_are_grouped(fake_store, copies, originals) -> None:
    progress = []
    report = find_groups(fake_store, "c", load, progress=lambda s, d, t: progress.append((s, d, t)))
    groups = names(report)
    for copy, original in copies.values():
        assert any({copy.name, original.name} <= g for g in groups), (copy.name, groups)
    assert any({"exact_copy_of_5.jpg", originals[5].name} <= g for g in groups)
    exact = [e for g in report.groups for e in g.evidence if e.comparison.check == "content-hash"]
    assert len(exact) == 1 and exact[0].comparison.score == 1.0
    assert all(len(g.images) >= 2 and g.evidence for g in report.groups)
    assert progress and progress[-1][1] == progress[-1][2]


def test_different_photos_of_one_object_are_never_grouped(fake_store, originals) -> None:
    report = find_groups(fake_store, "c", load)
    for g in names(report):
        assert len(g & {p.name for p in originals}) <= 1, g


def test_report_json_contract(fake_store) -> None:
    d = find_groups(fake_store, "c", load).to_dict()
    assert d["groups"] and all({"id", "path"} <= set(img) for g in d["groups"] for img in g["images"])
    ev = d["groups"][0]["evidence"][0]
    assert {"score", "inliers", "check", "a", "b"} <= set(ev)


def test_not_duplicates_is_remembered_across_runs(fake_store, copies, tmp_path) -> None:
    copy, original = copies["crop"]
    with Decisions(tmp_path / "d.sqlite") as d:
        first = find_groups(fake_store, "c", load, decisions=d)
        g = next(g for g in first.groups if copy.name in {Path(r.path).name for r in g.images})
        d.mark_not_duplicates(r.content_hash for r in g.images)
    with Decisions(tmp_path / "d.sqlite") as d:  # a new process: read back from disk
        again = find_groups(fake_store, "c", load, decisions=d)
    assert not any({copy.name, original.name} <= g for g in names(again))


def test_resolved_groups_do_not_come_back(fake_store, tmp_path) -> None:
    with Decisions(tmp_path / "d.sqlite") as d:
        first = find_groups(fake_store, "c", load, decisions=d)
        d.mark_resolved(first.groups[0].hashes)
        again = find_groups(fake_store, "c", load, decisions=d)
    assert len(again.groups) == len(first.groups) - 1 and again.left_out == 1


def test_union_find_refuses_to_join_across_a_decision() -> None:
    uf = UnionFind({"a": {"c"}, "c": {"a"}})
    for i, h in enumerate("abc"):
        uf.add_hash(i, h)
    assert uf.union(0, 1)
    assert not uf.union(1, 2)  # would put a and c together
    assert uf.find(2) != uf.find(0)
