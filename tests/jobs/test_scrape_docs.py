"""The docs job: config validation, and end to end on Ray (sample docs; a live test site with a rerun)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from chipforge.config import ConfigError, read_yaml, validate
from corpus.docs.sources import LocalSource, SiteSource
from corpus.schema import DOCS_SCHEMA, conform
from jobs import scrape_docs
from tests.corpus.docs.conftest import DocSite, doc_site  # noqa: F401 - the aiohttp site fixture

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_validate() -> None:
    real = validate(scrape_docs.CONFIG_CLASS, read_yaml(REPO_ROOT / "jobs/configs/docs.yaml"), source="docs.yaml")
    assert {s.tool for s in real.sources} >= {"yosys", "openroad", "opensta", "dreamplace", "openlane", "magic"}
    assert all(isinstance(s, SiteSource) for s in real.sources)
    assert all(u.startswith(tuple(s.allowed_prefixes)) for s in real.sources for u in s.start_urls)
    sample = validate(scrape_docs.CONFIG_CLASS, read_yaml(REPO_ROOT / "jobs/configs/docs_sample.yaml"), source="s")
    assert all(isinstance(s, LocalSource) and (REPO_ROOT / s.path).is_dir() for s in sample.sources)


def test_bad_configs_name_the_field() -> None:
    src = {"kind": "site", "name": "a", "tool": "yosys", "start_urls": ["ftp://x/"]}
    with pytest.raises(ConfigError, match="start_urls"):
        validate(scrape_docs.ScrapeDocsConfig, {"sources": [src]}, source="t.yaml")
    dup = {"kind": "local", "name": "a", "tool": "yosys", "path": "x"}
    with pytest.raises(ConfigError, match="unique"):
        validate(scrape_docs.ScrapeDocsConfig, {"sources": [dup, dup]}, source="t.yaml")
    with pytest.raises(ConfigError, match="max_chars"):
        validate(scrape_docs.ScrapeDocsConfig, {"sources": [dup], "chunk": {"max_chars": 10}}, source="t.yaml")


def _read_docs(out: Path):
    table = pads.dataset(str(out / "docs"), format="parquet").to_table()
    return conform(table, DOCS_SCHEMA, stage="test read")


@pytest.mark.integration
def test_job_on_sample_docs(ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "docs_out"
    assert scrape_docs.main(["--config", "jobs/configs/docs_sample.yaml", "--output", str(out)]) == 0
    table = _read_docs(out)
    assert table.schema == DOCS_SCHEMA
    report = json.loads((out / "report.json").read_text())
    t = report["totals"]
    assert t["pages"] == 15 and t["failed"] == 0 and t["chunks"] == table.num_rows > 30
    assert {r["source"] for r in report["sources"]} == set(table.column("source").to_pylist())
    assert set(table.column("tool").to_pylist()) == {"yosys", "openroad", "opensta", "magic", "dreamplace"}
    assert len(set(table.column("sha256").to_pylist())) == table.num_rows  # exact dedup
    assert max(table.column("n_chars").to_pylist()) <= report["config"]["chunk"]["max_chars"]
    assert t["chunks_with_code"] > 10
    assert "docs:" in capsys.readouterr().out
    first_ids = table.column("id").to_pylist()
    # rerun: same ids (content hashes), output replaced atomically
    assert scrape_docs.main(["--config", "jobs/configs/docs_sample.yaml", "--output", str(out)]) == 0
    assert _read_docs(out).column("id").to_pylist() == first_ids
    assert [p.name for p in (out / "docs").iterdir()] == ["part-00000.parquet"]


@pytest.mark.integration
def test_job_crawls_a_site_and_reuses_its_cache(ray_session, doc_site: DocSite, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "local").mkdir()
    note = "# STA\n\nTiming notes for the test.\n\n```tcl\nreport_checks -path_delay max\n```\n"
    (tmp_path / "local" / "sta.md").write_text(note)
    (tmp_path / "local" / "sta_copy.md").write_text(note)  # same text, other URL: an exact duplicate
    cfg = tmp_path / "site.yaml"
    cfg.write_text(
        "# launch: python -m jobs.scrape_docs --config site.yaml\n"
        "sources:\n"
        f"  - {{kind: site, name: testsite, tool: yosys, start_urls: ['{doc_site.base}/docs/index.html'],"
        f" allowed_prefixes: ['{doc_site.base}/docs/'], max_depth: 5, license: MIT}}\n"
        f"  - {{kind: local, name: local, tool: opensta, path: '{tmp_path / 'local'}'}}\n"
        f"crawl: {{timeout_s: 0.5, retries: 1, backoff_s: 0.01, max_bytes: 50000, min_interval_s: 0,"
        f" cache_dir: '{tmp_path / 'cache'}'}}\n"
        "chunk: {max_chars: 400, min_chars: 10, concurrency: 1, num_cpus: 0.5}\n")
    out = tmp_path / "out"
    assert scrape_docs.main(["--config", str(cfg), "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    site = next(s for s in report["sources"] if s["source"] == "testsite")
    assert site["pages"] == 7 and site["fetched"] == 7 and site["failed"] == 9
    assert site["failure_reasons"] == {"content_type": 1, "http_404": 1, "redirect_outside_prefix": 1,
                                       "robots_disallowed": 2, "timeout": 1, "too_large": 2,
                                       "too_many_redirects": 1}
    table = _read_docs(out)
    assert set(table.column("source").to_pylist()) == {"testsite", "local"}
    nav_free = [t for t in table.column("text").to_pylist() if "Home" in t or "site footer" in t]
    assert nav_free == []
    assert report["totals"]["dedup_dropped"] == 1
    assert sum(u.endswith("/sta.md") for u in table.column("url").to_pylist()) == 1  # first in URL order kept
    assert any("```yosys\nread_verilog top.v" in t for t in table.column("text").to_pylist())

    assert scrape_docs.main(["--config", str(cfg), "--output", str(out), "--force"]) == 0
    again = json.loads((out / "report.json").read_text())
    site2 = next(s for s in again["sources"] if s["source"] == "testsite")
    assert site2["revalidated"] == 7 and site2["fetched"] == 0
    assert again["totals"]["revalidated"] == 7 and sum(doc_site.not_modified.values()) == 7
    assert _read_docs(out).column("id").to_pylist() == table.column("id").to_pylist()


def test_input_fingerprint_survives_a_non_utf8_file_name(tmp_path: Path) -> None:
    """It listed local inputs with pyarrow, which cannot decode such a name: the job died with a traceback
    before reading anything. Links are followed (a linked file's change reruns the job), a link loop is
    walked once, and a FIFO is never opened."""
    import os

    from chipforge.job import fingerprint
    from pipelines.docs import SPEC

    root = tmp_path / "docs"
    root.mkdir()
    (root / "good.md").write_text("# Good\n\ntext\n")
    with open(os.fsencode(str(root)) + b"/bad\xffname.md", "wb") as f:
        f.write(b"# Bad name\n\ntext\n")
    cfg = validate(scrape_docs.ScrapeDocsConfig,
                   {"sources": [{"kind": "local", "name": "l", "tool": "yosys", "path": str(root)}]}, source="t.yaml")
    _, inputs = fingerprint(SPEC, cfg)
    assert inputs["source:l"]
    shared = tmp_path / "shared.md"
    shared.write_text("v1")
    os.symlink(shared, root / "link.md")
    os.symlink("..", root / "up")  # a loop: walked once
    os.mkfifo(root / "pipe.md")  # never opened: it would block
    linked = fingerprint(SPEC, cfg)[1]["source:l"]
    assert linked != inputs["source:l"]
    shared.write_text("v2")  # a linked file's content is part of the input, as the job reads it
    assert fingerprint(SPEC, cfg)[1]["source:l"] != linked