"""tools/browser_check.py: each check fails on a page built to break it, and only there.

The synthetic site below is a few hand-written pages with the markup Sphinx and the theme
produce (``article.bd-article``, ``div.cell_input``, ``.math``, ...), one fault each. The
test drives the real Chromium, like ``make browsercheck``; without Chromium it fails with
the message that says how to install it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


bc = load("browser_check")

WIDE = "x = 1  # " + "a long comment " * 20

PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8">
<style>
  body {{ margin: 0; }}
  article.bd-article {{ width: 600px; padding: 0 20px; }}
  pre {{ overflow-x: auto; }}
  mjx-container {{ display: block; overflow-x: auto; }}
</style></head>
<body><article class="bd-article"><section id="top"><h1>A page</h1>
{body}
</section></article></body></html>
"""

BROKEN = f"""
<script>throw new Error("boom");</script>
<p>inline <span class="math">\\(x\\)</span> math, never rendered</p>
<p>a raw formula $\\mu$ the parser missed</p>
<img src="missing.png" alt="">
<a href="clean.html#nowhere">an anchor the page lacks</a>
<a href="gone.html">a page that does not exist</a>
<div class="cell"><div class="cell_input"><div class="highlight"><pre>{WIDE}</pre></div></div>
<div class="cell_output"><div class="output"><div class="highlight"><pre>tensor([{WIDE}])</pre>
</div></div></div></div>
<mjx-container display="true"><span style="display:inline-block;width:2000px">y</span>
</mjx-container>
"""

CLEAN = """
<p id="here">Short lines, <a href="#top">a link to an anchor that exists</a>.</p>
<div class="cell"><div class="cell_input"><div class="highlight"><pre>x = 1</pre></div></div></div>
"""

SEARCH = """<!DOCTYPE html><html><body><div id="search-results">
<p class="search-summary">Search finished, found 0 page(s).</p></div></body></html>"""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    site = tmp_path_factory.mktemp("site")
    (site / "index.html").write_text(
        '<meta http-equiv="Refresh" content="0; url=broken.html" />', encoding="utf-8"
    )
    (site / "broken.html").write_text(PAGE.format(body=BROKEN), encoding="utf-8")
    (site / "clean.html").write_text(PAGE.format(body=CLEAN), encoding="utf-8")
    math = '<div class="math">\\[x^2\\]</div>'  # MathJax never ran on this page
    (site / "nomathjax.html").write_text(PAGE.format(body=math), encoding="utf-8")
    (site / "search.html").write_text(SEARCH, encoding="utf-8")
    (site / "_sources").mkdir()
    (site / "_sources" / "broken.ipynb").write_text("{}", encoding="utf-8")
    return bc.run(site, ["momentum"])


@pytest.mark.parametrize(
    "expected",
    [
        "broken.html: JavaScript error: boom",
        "nomathjax.html: 1 math elements and no MathJax output",
        "broken.html: unrendered math",
        "broken.html: TeX left in the text: 'a raw formula $\\\\mu$",
        "broken.html: image does not load: missing.png",
        "broken.html: request failed",
        "broken.html: link to clean.html#nowhere, which has no such anchor",
        "broken.html: link to missing",
        "broken.html: notebook page without a link to download its .ipynb",
        "broken.html: cell source in 'A page' is",
        "broken.html: equation in 'A page' is",
        "search: no result for 'momentum'",
    ],
)
def test_each_fault_is_found(report, expected: str) -> None:
    assert any(expected in line for line in report.failures), "\n".join(report.failures)


def test_clean_page_and_redirect_pass(report) -> None:
    assert not [line for line in report.failures if line.startswith(("clean.html", "index"))]


def test_tensor_output_is_exempt_not_failed(report) -> None:
    assert any("output in 'A page'" in line for line in report.exempted)
    assert not any("output in 'A page'" in line for line in report.failures)


def test_phone_width_is_reported(report) -> None:
    assert any("broken.html: cell source" in line for line in report.phone)


def test_api_ids_cover_normtut_all_and_functional() -> None:
    import types

    import normtut
    from normtut import functional

    ids = bc.expected_api_ids()
    for name in normtut.__all__:
        obj = getattr(normtut, name)
        module = isinstance(obj, types.ModuleType)
        assert (f"module-{obj.__name__}" if module else f"normtut.{name}") in ids
    assert {f"normtut.functional.{n}" for n in bc.module_public_names(functional)} <= ids
    assert "normtut.functional.batch_norm" in ids
    assert "normtut.optim.SGD" in ids
    assert "module-normtut.experiments.small_batch" in ids
    assert "normtut.functional.checks" not in ids  # imported, not defined there


def test_check_api_names_what_is_missing(tmp_path: Path) -> None:
    ids = bc.expected_api_ids() | {"module-normtut"}
    page = bc.Page(tmp_path / "api.html", data={"ids": sorted(ids - {"normtut.BatchNorm2d"})})
    assert bc.check_api({page.path: page}) == ["API reference: no entry for normtut.BatchNorm2d"]
    assert bc.check_api({}) == []  # a build without the API reference


def test_citations_counts_entries_linked_from_other_pages(tmp_path: Path) -> None:
    bib, chapter = tmp_path / "bibliography.html", tmp_path / "chapter.html"
    bib_page = bc.Page(
        bib,
        data={
            "list_items": [["id2", "Ioffe and Szegedy"], ["id3", "Wu and He"]],
            "links": [{"href": bib.as_uri() + "#id3", "text": "self"}],  # not a citation
        },
    )
    chapter_page = bc.Page(chapter, data={"links": [{"href": bib.as_uri() + "#id2", "text": ""}]})
    assert bc.citations({bib: bib_page, chapter: chapter_page}) == (1, ["Wu and He"])
