"""Page text → title and sections of clean blocks (text paragraphs, lists, tables, fenced code).

Every format is parsed by a maintained library and reduced to one HTML tree, which a single
walker turns into sections: Markdown via markdown-it-py (CommonMark + tables), reStructuredText
via docutils (html5 writer), HTML via BeautifulSoup + lxml. Plain text is split on blank lines.

Boilerplate dropped before walking: script/style/nav/header/footer/aside/form elements, ARIA
navigation/banner/contentinfo landmarks, and elements whose class or id names a sidebar,
breadcrumb, table of contents, "edit this page" link, header permalink, cookie banner or the
like. The walker keeps headings (they open sections), paragraphs, lists (``- item``, nested
by indent), tables (``| a | b |`` rows) and code blocks (fenced, with their language when the
markup names one: ``tcl``, ``yosys``, ``shell``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

DROP_TAGS = ("script", "style", "noscript", "nav", "header", "footer", "aside", "form", "button",
             "iframe", "svg", "template", "link", "meta")
DROP_ROLES = ("navigation", "banner", "contentinfo", "search", "complementary")
# Class/id words of boilerplate containers (Sphinx, MkDocs, Docusaurus, readthedocs themes).
BOILERPLATE_WORDS = ("sidebar", "sphinxsidebar", "breadcrumb", "navbar", "wy-nav", "md-nav", "md-header",
                     "md-footer", "toctree", "table-of-contents", "localtoc", "edit-this-page", "editthispage",
                     "edit-page", "headerlink", "skip-link", "cookie", "rst-versions", "related", "prev-next",
                     "pagination", "footer", "theme-doc-toc", "admonition-todo")
EDIT_LINK_TEXTS = ("edit this page", "edit on github", "view page source", "suggest an edit", "improve this page")
MAIN_SELECTORS = ("main", "[role=main]", "article", "div.document", "div.body", "div.rst-content", "div.md-content",
                  "div#content", "div.content")
LANG_PREFIXES = ("language-", "lang-", "highlight-", "sourceCode ")
LANG_ALIASES = {"bash": "shell", "sh": "shell", "console": "shell", "shell-session": "shell", "tcl": "tcl",
                "ys": "yosys", "yoscrypt": "yosys", "yosys": "yosys", "none": "", "default": "", "text": ""}
HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
# Deeper pages are refused (``too_deep``): the walker recurses per level and several of its steps
# search a whole subtree, so thousands of nested tags cost minutes before a RecursionError.
# Real documentation pages nest a few dozen levels.
MAX_DEPTH = 256


@dataclass
class Block:
    kind: str  # text | code
    text: str  # code: the fenced block (```lang ... ```)


@dataclass
class Section:
    path: list[str]  # headings from the page title down
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Page:
    url: str
    title: str
    sections: list[Section]


def fence(code: str, lang: str = "") -> str:
    code = code.strip("\n")
    ticks = "````" if "```" in code else "```"
    return f"{ticks}{lang}\n{code}\n{ticks}"


def _squash(text: str) -> str:
    return " ".join(text.split())


def _is_boilerplate(tag: Any) -> bool:
    if tag.attrs is None:
        return False
    if tag.get("role") in DROP_ROLES:
        return True
    names = " ".join([*(tag.get("class") or []), tag.get("id") or ""]).lower()
    if names and any(w in names for w in BOILERPLATE_WORDS):
        return True
    if tag.name == "a" and _squash(_short_text(tag)).lower() in EDIT_LINK_TEXTS:
        return True
    return False


def _short_text(tag: Any, limit: int = 200) -> str:
    """``tag``'s text if at most ``limit`` characters, else "" (without reading a whole large subtree)."""
    out, n = [], 0
    for text in tag.strings:
        n += len(text)
        if n > limit:
            return ""
        out.append(text)
    return "".join(out)


def _code_language(pre: Any) -> str:
    classes = pre.get("class") or []
    if "code" in classes and "literal-block" in classes:  # docutils: <pre class="code LANG literal-block">
        rest = [c for c in classes if c not in ("code", "literal-block")]
        if rest:
            return LANG_ALIASES.get(rest[0].lower(), rest[0].lower())
    for node in (pre.find("code"), pre, pre.parent, pre.parent.parent if pre.parent else None):
        if node is None or node.attrs is None:
            continue
        for cls in node.get("class") or []:
            for prefix in LANG_PREFIXES:
                if cls.startswith(prefix.strip()) and cls != prefix.strip():
                    lang = cls[len(prefix.strip()):].lower()
                    return LANG_ALIASES.get(lang, lang)
            if node is not pre.find("code") and cls in LANG_ALIASES and cls not in ("none", "default", "text"):
                return LANG_ALIASES[cls]
        if node.get("data-lang"):
            return LANG_ALIASES.get(node["data-lang"].lower(), node["data-lang"].lower())
    return ""


def _inline(tag: Any) -> str:
    """Text of an inline container, with inline ``code`` in backticks."""
    from bs4 import NavigableString, Tag

    parts: list[str] = []
    for node in tag.children:
        if isinstance(node, NavigableString):
            parts.append(str(node))
        elif isinstance(node, Tag):
            if node.name == "code" or (node.name in ("span", "tt") and "literal" in (node.get("class") or [])):
                parts.append(f"`{node.get_text()}`")
            elif node.name == "br":
                parts.append("\n")
            else:
                parts.append(_inline(node))
    return "".join(parts)


def _rows(table: Any) -> list[Any]:
    """The table's own rows (not those of tables nested in its cells: they are in their cell's text)."""
    rows = []
    for child in table.find_all(["tr", "thead", "tbody", "tfoot"], recursive=False):
        rows += [child] if child.name == "tr" else child.find_all("tr", recursive=False)
    return rows


def _table(table: Any) -> str:
    rows = []
    for tr in _rows(table):
        cells = [_squash(_inline(c)).replace("|", "\\|") for c in tr.find_all(["th", "td"], recursive=False)]
        if cells:
            rows.append((cells, bool(tr.find("th", recursive=False)) or tr.parent.name == "thead"))
    if not rows:
        return ""
    width = max(len(c) for c, _ in rows)
    lines = []
    for i, (cells, header) in enumerate(rows):
        cells = cells + [""] * (width - len(cells))
        lines.append("| " + " | ".join(cells) + " |")
        if i == 0:
            lines.append("|" + "|".join(["---"] * width) + "|")
    return "\n".join(lines)


def _list(lst: Any, depth: int = 0) -> str:
    lines = []
    for i, li in enumerate(lst.find_all("li", recursive=False), 1):
        marker = f"{i}." if lst.name == "ol" else "-"
        nested = [c for c in li.find_all(["ul", "ol"], recursive=False)]
        for n in nested:
            n.extract()
        pres = [p.extract() for p in li.find_all("pre")]
        lines.append("  " * depth + f"{marker} {_squash(_inline(li))}")
        for p in pres:
            lines.append(fence(p.get_text(), _code_language(p)))
        for n in nested:
            lines.append(_list(n, depth + 1))
    return "\n".join(l for l in lines if l.strip())


class _Walker:
    def __init__(self, title: str) -> None:
        self.title = title
        self.stack: list[tuple[int, str]] = []
        self.sections: list[Section] = [Section([title] if title else [])]

    def heading(self, level: int, text: str) -> None:
        if not text:
            return
        if level == 1 and text == self.title and not self.stack and not self.sections[-1].blocks:
            return  # the page's own h1 is the title
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        self.stack.append((level, text))
        base = [self.title] if self.title else []
        self.sections.append(Section(base + [t for _, t in self.stack]))

    def add(self, kind: str, text: str) -> None:
        text = text.strip("\n") if kind == "code" else text.strip()
        if text:
            self.sections[-1].blocks.append(Block(kind, text))

    def walk(self, node: Any) -> None:
        from bs4 import NavigableString, Tag

        for child in list(node.children):
            if isinstance(child, NavigableString):
                if child.__class__.__name__ == "NavigableString" and _squash(str(child)):
                    self.add("text", _squash(str(child)))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name
            if name in HEADINGS:
                self.heading(int(name[1]), _squash(child.get_text(" ")).rstrip("¶#").strip())
            elif name == "pre":
                self.add("code", fence(child.get_text(), _code_language(child)))
            elif name in ("ul", "ol"):
                self.add("text", _list(child))
            elif name == "table":
                self.add("text", _table(child))
            elif name == "dl":
                for item in child.find_all(["dt", "dd"], recursive=False):
                    if item.name == "dt":
                        self.add("text", f"**{_squash(_inline(item))}**")
                    else:
                        self.walk(item) if item.find(["p", "pre", "ul", "ol", "table"]) else self.add(
                            "text", _squash(_inline(item)))
            elif name in ("p", "blockquote", "figcaption", "caption") and not child.find(["pre", "ul", "ol", "table", "div"]):
                self.add("text", _squash(_inline(child)))
            elif name in ("code", "span", "a", "em", "strong", "b", "i") :
                self.add("text", _squash(_inline(child)))
            else:
                self.walk(child)


def _clean(soup: Any) -> Any:
    from bs4 import Tag

    for tag in soup.find_all(DROP_TAGS):
        tag.decompose()
    # Top-down, not descending into what is dropped. (Not ``tag.decomposed``: on a live Tag that
    # property falls through to ``find("_decomposed")``, a search of the whole subtree per tag.)
    stack = [soup]
    while stack:
        for child in list(stack.pop().contents):
            if isinstance(child, Tag):
                if _is_boilerplate(child):
                    child.decompose()
                else:
                    stack.append(child)
    for img in soup.find_all("img"):
        img.decompose()
    main = None
    for selector in MAIN_SELECTORS:
        main = soup.select_one(selector)
        if main is not None:
            break
    return main or soup.body or soup


def _title_of(soup: Any, fallback: str) -> str:
    h1 = soup.find("h1")
    if h1 and _squash(h1.get_text(" ")).rstrip("¶#").strip():
        return _squash(h1.get_text(" ")).rstrip("¶#").strip()
    if soup.title and soup.title.string and soup.title.string.strip():
        return _squash(soup.title.string).split(" — ")[0].split(" | ")[0].strip()
    return fallback


def _check_depth(soup: Any) -> None:
    """ValueError("too_deep: ...") when elements nest deeper than ``MAX_DEPTH`` (iterative walk)."""
    from bs4 import Tag

    stack = [(soup, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"too_deep: elements nested more than {MAX_DEPTH} levels")
        stack.extend((c, depth + 1) for c in node.contents if isinstance(c, Tag))


def html_page(html: str, url: str) -> Page:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "lxml")
    _check_depth(soup)
    fallback = PurePosixPath(url.split("?", 1)[0].rstrip("/")).stem or url
    main = _clean(soup)  # boilerplate gone first, so a sidebar's h1 never becomes the title
    title = _title_of(soup, fallback)
    walker = _Walker(title)
    walker.walk(main)
    return Page(url=url, title=title, sections=[s for s in walker.sections if s.blocks])


def markdown_html(text: str) -> str:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    return md.render(text)


def rst_html(text: str, url: str) -> str:
    from docutils.core import publish_parts

    parts = publish_parts(
        source=text, source_path=url, writer="html5",
        settings_overrides={"report_level": 5, "halt_level": 5, "file_insertion_enabled": False,
                            "raw_enabled": False, "doctitle_xform": True, "syntax_highlight": "none",
                            "input_encoding": "unicode", "warning_stream": False},
    )
    title = parts.get("title") or ""
    return f"<html><body><main><h1>{title}</h1>{parts['body']}</main></body></html>" if title else \
        f"<html><body><main>{parts['body']}</main></body></html>"


def text_page(text: str, url: str) -> Page:
    fallback = PurePosixPath(url.rstrip("/")).stem or url
    paras = [p.strip("\n") for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    title = fallback
    if paras and "\n" not in paras[0].strip() and len(paras[0]) <= 120:
        title = paras.pop(0).strip().strip("=#-").strip() or fallback
    blocks = []
    for p in paras:
        lines = p.split("\n")
        if all(l.startswith(("    ", "\t", "$ ", "% ")) for l in lines if l.strip()):
            code = "\n".join(l[4:] if l.startswith("    ") else l.lstrip("\t") for l in lines)
            blocks.append(Block("code", fence(code, "shell" if lines[0].lstrip().startswith(("$ ", "% ")) else "")))
        else:
            blocks.append(Block("text", "\n".join(l.rstrip() for l in lines)))
    return Page(url=url, title=title, sections=[Section([title], blocks)] if blocks else [])


def extract(content: str, fmt: str, url: str) -> Page:
    """One page of ``fmt`` (html | markdown | rst | text) → ``Page`` with title and sections."""
    if fmt == "html":
        return html_page(content, url)
    if fmt == "markdown":
        return html_page(markdown_html(content), url)
    if fmt == "rst":
        return html_page(rst_html(content, url), url)
    if fmt == "text":
        return text_page(content, url)
    raise ValueError(f"{url}: unknown page format {fmt!r}")
