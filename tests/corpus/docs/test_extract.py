"""Extraction keeps headings, lists, tables and code (with language) and drops boilerplate."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus.docs.extract import extract

SAMPLE = Path(__file__).resolve().parents[3] / "sample" / "docs"

HTML = """<html><head><title>Placement — Tool docs</title><script>var x = 1;</script></head><body>
<header>Site header</header>
<nav class="wy-nav-side"><h1>Navigation heading</h1><a href="/">Home</a></nav>
<div class="breadcrumbs">Docs » Placement</div>
<main>
<h1>Placement<a class="headerlink" href="#p">¶</a></h1>
<p>Intro with <code>global_placement</code> inline.</p>
<h2>Commands</h2>
<ul><li>first <b>item</b><ul><li>nested</li></ul></li><li>second</li></ul>
<div class="highlight-tcl"><div class="highlight"><pre>global_placement -density 0.6
detailed_placement</pre></div></div>
<h3>Options</h3>
<table><tr><th>Option</th><th>Meaning</th></tr><tr><td>-density</td><td>target | density</td></tr></table>
<h2>Script</h2>
<pre><code class="language-shell">$ openroad -exit flow.tcl</code></pre>
<a class="edit-this-page" href="#">Edit this page</a>
</main>
<aside class="sidebar">Related pages</aside>
<footer>Copyright footer</footer>
</body></html>"""


def _all_text(page) -> str:
    return "\n".join(b.text for s in page.sections for b in s.blocks)


def test_html_keeps_structure_and_drops_boilerplate() -> None:
    page = extract(HTML, "html", "https://docs.example/placement.html")
    assert page.title == "Placement"
    paths = [s.path for s in page.sections]
    assert paths == [["Placement"], ["Placement", "Commands"], ["Placement", "Commands", "Options"],
                     ["Placement", "Script"]]
    text = _all_text(page)
    for junk in ("Site header", "Navigation heading", "Docs »", "Edit this page", "Related pages", "Copyright",
                 "var x", "¶"):
        assert junk not in text
    assert "Intro with `global_placement` inline." in text
    assert "- first item\n  - nested\n- second" in text
    assert "```tcl\nglobal_placement -density 0.6\ndetailed_placement\n```" in text
    assert "| Option | Meaning |\n|---|---|\n| -density | target \\| density |" in text
    assert "```shell\n$ openroad -exit flow.tcl\n```" in text
    kinds = {b.kind for s in page.sections for b in s.blocks}
    assert kinds == {"text", "code"}


def test_markdown() -> None:
    md = "# Title\n\nIntro.\n\n## Run\n\n```yosys\nsynth -top top\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- x\n- y\n"
    page = extract(md, "markdown", "file:///d/run.md")
    assert page.title == "Title"
    assert [s.path for s in page.sections] == [["Title"], ["Title", "Run"]]
    run = "\n\n".join(b.text for b in page.sections[1].blocks)
    assert run == "```yosys\nsynth -top top\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- x\n- y"


def test_restructuredtext() -> None:
    rst = ("Timing\n======\n\nUse ``report_checks`` often.\n\nPaths\n-----\n\n.. code-block:: tcl\n\n"
           "   report_checks -path_delay max\n\n.. code-block:: bash\n\n   sta -exit run.tcl\n\n* one\n* two\n")
    page = extract(rst, "rst", "file:///d/timing.rst")
    assert page.title == "Timing"
    assert [s.path for s in page.sections] == [["Timing"], ["Timing", "Paths"]]
    text = _all_text(page)
    assert "Use `report_checks` often." in text
    assert "```tcl\nreport_checks -path_delay max\n```" in text and "- one\n- two" in text
    assert "```shell\nsta -exit run.tcl\n```" in text


def test_broken_rst_does_not_raise() -> None:
    page = extract("Title\n===\n\n.. unknown-directive::\n\n   body\n\n`unclosed\n", "rst", "file:///x.rst")
    assert page.title


def test_plain_text() -> None:
    page = extract("Magic DRC\n\nRun checks often.\n\n    drc check\n    drc count\n", "text", "file:///d/drc.txt")
    assert page.title == "Magic DRC"
    assert [b.kind for b in page.sections[0].blocks] == ["text", "code"]
    assert page.sections[0].blocks[1].text == "```\ndrc check\ndrc count\n```"


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown page format"):
        extract("x", "pdf", "http://h/x.pdf")


@pytest.mark.parametrize("path", sorted(p for p in SAMPLE.glob("*/*") if p.suffix in {".html", ".md", ".rst", ".txt"}),
                         ids=lambda p: str(p.relative_to(SAMPLE)))
def test_sample_pages_extract(path: Path) -> None:
    fmt = {".html": "html", ".md": "markdown", ".rst": "rst", ".txt": "text"}[path.suffix]
    page = extract(path.read_text(), fmt, f"file://{path}")
    assert page.title and page.sections
    text = _all_text(page)
    assert "```" in text  # every sample page has at least one code block
    for junk in ("Edit this page", "View page source", "Navigation", "chipforge sample docs"):
        assert junk not in text
