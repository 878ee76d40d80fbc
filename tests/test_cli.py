"""The `lookalike` command as a user drives it: outputs, --json, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lookalike.embed import DEFAULT_MODEL

from .conftest import cli_env, ukbench_images


def run(home: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lookalike.cli", *args], env=cli_env(home), capture_output=True,
                          text=stdin is None, input=stdin, timeout=300)


@pytest.fixture
def indexed(home: Path, small_folder: Path) -> Path:
    out = run(home, "index", str(small_folder), "--collection", "photos", "--tag", "trip", "--group", "g1")
    assert out.returncode == 0, out.stderr
    assert "12 added" in out.stdout
    return small_folder


def test_index_search_info_json(home: Path, indexed: Path) -> None:
    out = run(home, "search", str(indexed / "ukbench00004.jpg"), "-k", "4", "-c", "photos", "--json")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    assert [Path(r["path"]).name for r in results] == [f"ukbench0000{i}.jpg" for i in range(4, 8)] or \
        {Path(r["path"]).name for r in results} == {f"ukbench0000{i}.jpg" for i in range(4, 8)}
    assert results[0]["score"] == pytest.approx(1.0, abs=3e-3)  # refined (DBA + expansion) score of itself
    assert results[0]["tags"] == ["trip"] and results[0]["group_id"] == "g1"
    plain = run(home, "search", str(indexed / "ukbench00004.jpg"), "-k", "4", "-c", "photos", "--json", "--no-expand")
    assert plain.returncode == 0 and json.loads(plain.stdout)["results"][0]["path"] == results[0]["path"]
    info = json.loads(run(home, "info", "--collection", "photos", "--json").stdout)
    assert info["count"] == 12 and info["model"] == DEFAULT_MODEL and info["index_type"] == "Flat"
    assert info["settings"]["refine"]["dba_k"] == 4
    assert info["size_bytes"] > 12 * 2304 * 4
    whole = json.loads(run(home, "info", "--json").stdout)
    assert whole["count"] == 12


def test_table_output_and_search_by_id_and_stdin(home: Path, indexed: Path) -> None:
    table = run(home, "search", str(indexed / "ukbench00000.jpg"), "-k", "3", "-c", "photos")
    assert table.returncode == 0 and "ukbench00000.jpg" in table.stdout
    first = json.loads(run(home, "search", str(indexed / "ukbench00000.jpg"), "-k", "1", "-c", "photos",
                           "--json").stdout)["results"][0]
    more = json.loads(run(home, "search", "--id", str(first["id"]), "-k", "3", "-c", "photos", "--json").stdout)
    assert first["id"] not in [r["id"] for r in more["results"]]
    assert {Path(r["path"]).name for r in more["results"]} == {"ukbench00001.jpg", "ukbench00002.jpg",
                                                               "ukbench00003.jpg"}
    piped = run(home, "search", "-", "-k", "1", "-c", "photos", "--json",
                stdin=(indexed / "ukbench00008.jpg").read_bytes())
    assert json.loads(piped.stdout)["results"][0]["path"].endswith("ukbench00008.jpg")


def test_filters_from_the_command_line(home: Path, indexed: Path) -> None:
    out = run(home, "search", str(indexed / "ukbench00000.jpg"), "-k", "5", "-c", "photos", "--tag", "nope",
              "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["results"] == []
    out = run(home, "search", str(indexed / "ukbench00000.jpg"), "-k", "2", "-c", "photos", "--group", "g1",
              "--json")
    assert len(json.loads(out.stdout)["results"]) == 2


def test_remove_and_collections(home: Path, indexed: Path) -> None:
    out = run(home, "remove", str(indexed / "ukbench00000.jpg"), "-c", "photos", "--json")
    assert json.loads(out.stdout)["removed"] == 1
    assert json.loads(run(home, "info", "-c", "photos", "--json").stdout)["count"] == 11
    assert run(home, "collections", "create", "empty", "--json").returncode == 0
    listed = json.loads(run(home, "collections", "list", "--json").stdout)
    assert {c["name"] for c in listed["collections"]} == {"photos", "empty"}
    assert run(home, "collections", "drop", "empty", "--yes").returncode == 0
    assert "empty" not in run(home, "collections").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "QUERY", "-c", "nope"], "no collection named 'nope'"),
        (["search", "/no/such/file.jpg", "-c", "photos"], "does not exist"),
        (["search", "BADQUERY", "-c", "photos"], "not-an-image"),
        (["index", "FOLDER", "-c", "photos", "--model", "efficientnet-lite0"],
         "holds efficientnet-lite0+mobilenet-v3-small"),
        (["search", "QUERY", "-c", "empty"], "is empty"),
        (["index", "FOLDER", "-c", "x", "--model", "no-such-model"], "unknown model"),
        (["remove", "/not/indexed.jpg", "-c", "photos"], "is not in collection"),
    ],
)
def test_user_errors_are_one_line_exit_1(home: Path, indexed: Path, tmp_path: Path, args: list[str],
                                         message: str) -> None:
    run(home, "collections", "create", "empty")
    bad = tmp_path / "bad.jpg"
    bad.write_text("hello")
    subst = {"QUERY": str(ukbench_images(1)[0]), "FOLDER": str(indexed), "BADQUERY": str(bad)}
    out = run(home, *[subst.get(a, a) for a in args])
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr


def test_usage_errors_exit_2(home: Path) -> None:
    assert run(home, "search").returncode == 2
    assert run(home, "index").returncode == 2
    assert run(home, "frobnicate").returncode == 2
    assert run(home, "search", "x.jpg", "-k", "0").returncode == 2


def test_models_lists_the_default(home: Path) -> None:
    out = run(home, "models", "--json")
    data = json.loads(out.stdout)
    assert data["default"] in {m["name"] for m in data["models"]}


def test_collection_refinement_can_be_changed(home: Path, indexed: Path) -> None:
    out = run(home, "collections", "refine", "photos", "--off", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["refine"]["dba_k"] == 0
    query = str(indexed / "ukbench00004.jpg")
    top = json.loads(run(home, "search", query, "-k", "1", "-c", "photos", "--json").stdout)["results"][0]
    assert top["score"] == pytest.approx(1.0, abs=1e-5)  # plain cosine of the picture with itself
    out = run(home, "collections", "refine", "photos", "--dba-k", "3", "--qe-k", "2", "--json")
    assert json.loads(out.stdout)["refine"] == {"dba_k": 3, "dba_power": 3.0, "qe_k": 2, "qe_alpha": 3.0}
    info = json.loads(run(home, "info", "-c", "photos", "--json").stdout)
    assert info["settings"]["refine"]["dba_k"] == 3
    plain = run(home, "collections", "create", "raw", "--plain", "--json")
    assert plain.returncode == 0 and json.loads(plain.stdout)["settings"] == {}
    turned_on = run(home, "collections", "refine", "raw", "--json")  # a plain collection gets the defaults
    assert json.loads(turned_on.stdout)["refine"]["dba_k"] == 4 and json.loads(turned_on.stdout)["refine"]["qe_k"] == 5
    assert run(home, "collections", "create", "hashes", "--model", "phash").returncode == 0
    refused = run(home, "collections", "refine", "hashes", "--dba-k", "4")
    assert refused.returncode == 1 and "hamming" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
