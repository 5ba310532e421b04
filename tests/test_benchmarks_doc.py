"""docs/benchmarks.md is rendered from the bench records in docs/results/bench/, and every bench writes one."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


render = _module(ROOT / "scripts" / "render_benchmarks.py", "render_benchmarks")


def test_benchmarks_doc_is_what_the_records_render_to():
    rendered = render.render(render.load_records())
    assert render.DOC.read_text(encoding="utf-8") == rendered, "docs/benchmarks.md is stale: run `make benchmarks-doc`"
    assert render.main(["--check"]) == 0


def test_a_new_record_changes_the_doc(tmp_path):
    folder = tmp_path / "bench"
    shutil.copytree(render.RECORDS, folder)
    before = render.render(render.load_records(folder))
    record = json.loads(next(folder.glob("serving-*.json")).read_text())
    record |= {"date": "2099-01-01T00:00:00+00:00", "commit": "f00dfee", "historical": False,
               "headline": {**record["headline"], "value": 0.123}}
    (folder / "serving-20990101T000000Z-f00dfee.json").write_text(json.dumps(record))
    after = render.render(render.load_records(folder))
    assert after != before
    assert "### 2099-01-01, commit f00dfee" in after and "| 0.123 |" in after


def test_every_bench_writes_a_record_and_imports_no_tests():
    benches = [p for p in (ROOT / "bench").glob("*.py") if p.name != "record.py"]
    assert benches
    for path in benches:
        text = path.read_text(encoding="utf-8")
        assert "record.write_record(" in text and "record.add_arguments(" in text, f"{path.name} writes no record"
        assert "import tests" not in text and "from tests" not in text, f"{path.name} imports the tests"
        assert path.stem in render.BENCHES, f"{path.name}: no section in scripts/render_benchmarks.py"


def test_bench_record_names_the_machine_and_the_commit(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        record = _module(ROOT / "bench" / "record.py", "bench_record")
    finally:
        sys.path.remove(str(ROOT / "bench"))
    import argparse

    parser = argparse.ArgumentParser()
    record.add_arguments(parser)
    args = parser.parse_args(["--record-dir", str(tmp_path)])
    path = record.write_record(args, "serving", {"ratio": 0.5}, headline={"name": "ratio", "value": 0.5})
    written = json.loads(path.read_text())
    assert written["machine"]["cores"] >= 1 and written["machine"]["cpu"]
    assert written["commit"] and written["date"] and written["command"].startswith("python ")
    assert written["figures"] == {"ratio": 0.5} and not written["historical"]
    assert render.render([{**written, "_file": path.name}]).count("### ") == 1
    assert record.write_record(parser.parse_args(["--no-record"]), "serving", {}) is None
