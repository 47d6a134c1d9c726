"""Open every page of the built book in Chromium and fail on what a reader would find broken.

    python tools/browser_check.py [BUILD_DIR] [--search TERM ...] [--screenshots DIR]

BUILD_DIR is a built HTML book (default ``_build/html``; the Chinese edition is checked the
same way with ``_build/zh/html``). Playwright drives the system's Chromium (Debian's
``chromium`` package); one browser, one tab per window width, every page by ``file://``.

At a 1280 px window it fails when a page

- logs a JavaScript error (an uncaught exception or ``console.error``) or a request fails
  (a missing stylesheet, script, font or image; the book must work offline);
- leaves TeX unrendered: a ``math`` element without MathJax output, or ``$...$``, ``\\(``,
  ``\\[``, ``\\begin{`` or ``\\frac`` in the text outside code;
- shows an image that does not load;
- has an internal link to a file that is not there or to an ``#anchor`` the target page
  lacks (external links are not followed: the check runs offline);
- is a notebook page without a link to download its ``.ipynb``;
- has a code listing or a display equation wider than the text column, i.e. one that
  scrolls sideways or sticks out of the column. Checked: the source of code cells, included
  source and code blocks, API signatures, display equations, and cell outputs. Exempt:
  outputs that print a tensor (``tensor(`` or ``Parameter containing``), whose width is
  torch's to choose; they scroll inside their box;
- or when the page itself scrolls sideways.

It also fails when the search page finds nothing for a term that occurs in the book, and,
when the build has the API reference, when a public name of normtut has no entry there.

At a 420 px window (a phone) the same layout measurements are reported, not failed on:
long display equations and wide outputs scroll there by design.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import resource
import shutil
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

DESKTOP = 1280
PHONE = 420
HEIGHT = 900
REDIRECT = re.compile(r'<meta http-equiv="Refresh" content="0; url=([^"]+)"', re.IGNORECASE)
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads", "_modules"}
INSTALL_HINT = (
    "The browser test needs Chromium. Install it, e.g. on Debian/Ubuntu:\n"
    "    sudo apt-get install -y chromium\n"
    "then run `make test` again. (Playwright drives the system's Chromium; "
    "`playwright install` is not needed.)"
)

# Measures one page; returns everything the checks need. Runs in the page.
MEASURE_JS = r"""
async () => {
  const out = {ids: [], links: [], images: [], math: 0, unrendered: 0, stray_tex: [],
               wide: [], page_width: document.documentElement.scrollWidth,
               download: [], citations: []};
  // Ids (and old-style <a name>) that #anchors can point to.
  for (const e of document.querySelectorAll('[id]')) out.ids.push(e.id);
  for (const e of document.querySelectorAll('a[name]')) out.ids.push(e.getAttribute('name'));
  // Links: the resolved URL of every <a href>.
  for (const a of document.querySelectorAll('a[href]')) {
    out.links.push({href: a.href, text: (a.textContent || '').trim().slice(0, 60)});
  }
  out.list_items = [...document.querySelectorAll('article div.citation[id], article li[id]')].map(
      e => [e.id, (e.querySelector('p') || e).textContent.trim().slice(0, 70)]);
  for (const a of document.querySelectorAll('a.btn-download-source-button')) {
    out.download.push(a.href);
  }
  // Images: decode each one (lazy images included).
  const imgs = [...document.querySelectorAll('img')];
  const decoded = await Promise.all(imgs.map(img => {
    const probe = new Image();
    probe.src = img.currentSrc || img.src;
    return probe.decode().then(() => null, () => img.getAttribute('src'));
  }));
  out.images = decoded.filter(x => x !== null);
  // Math: every .math element must hold MathJax output.
  const maths = [...document.querySelectorAll('.math')];
  out.math = maths.length;
  out.unrendered = maths.filter(m => !m.querySelector('mjx-container')).map(
      m => m.textContent.trim().slice(0, 80));
  out.rendered = document.querySelectorAll('mjx-container').length;
  // TeX left in the text (outside code, scripts and rendered math).
  const skip = 'script, style, pre, code, textarea, mjx-container, .math, .highlight';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const tex = /\$[^\s$][^$]*\$|\\\(|\\\[|\\begin\{|\\frac|\\mathrm\{/;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (n.parentElement && n.parentElement.closest(skip)) continue;
    const m = n.textContent.match(tex);
    if (m) out.stray_tex.push(n.textContent.trim().slice(0, 80));
  }
  // Layout: what is wider than the text column.
  const article = document.querySelector('article.bd-article') || document.body;
  const style = getComputedStyle(article);
  const colRight = article.getBoundingClientRect().right - parseFloat(style.paddingRight);
  const kindOf = (e) => {
    if (e.closest('.cell_output, .output')) return 'output';
    if (e.closest('.cell_input')) return 'cell source';
    if (e.closest('dt.sig')) return 'signature';
    if (e.matches('mjx-container')) return 'equation';
    if (e.closest('table')) return 'table';
    return 'listing';
  };
  const excess = (e) => Math.max(e.scrollWidth - e.clientWidth,
                                 e.getBoundingClientRect().right - colRight);
  const candidates = [
    ...article.querySelectorAll('div.highlight pre, mjx-container[display="true"], dt.sig, table'),
  ];
  for (const e of candidates) {
    const px = Math.round(excess(e));
    if (px <= 1) continue;
    const text = e.innerText || e.textContent || '';
    const lines = text.split('\n');
    const longest = lines.reduce((a, b) => (b.length > a.length ? b : a), '');
    let section = e.closest('section');
    const heading = section ? section.querySelector('h1, h2, h3, h4') : null;
    out.wide.push({
      kind: kindOf(e), px, chars: longest.length,
      line: longest.trim().slice(0, 70),
      section: heading ? heading.textContent.replace('#', '').trim().slice(0, 60) : '',
      tensor: /tensor\(|Parameter containing/.test(text),
    });
  }
  // What makes the page itself scroll sideways: the outermost elements past the window's
  // right edge that no scrolling box contains.
  out.culprits = [];
  const W = document.documentElement.clientWidth;
  if (out.page_width > W + 1) {
    const clipped = (e) => {
      for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
        const o = getComputedStyle(a).overflowX;
        if (o === 'auto' || o === 'scroll' || o === 'hidden' || o === 'clip') return true;
      }
      return false;
    };
    for (const e of document.body.querySelectorAll('*')) {
      const parent = e.parentElement;
      if (!parent || e.getBoundingClientRect().right <= W + 1) continue;
      if (parent.getBoundingClientRect().right > W + 1 || clipped(e)) continue;
      if (getComputedStyle(e).position === 'fixed') continue;
      const cls = typeof e.className === 'string' ? e.className.split(' ')[0] : '';
      out.culprits.push(`${e.tagName.toLowerCase()}${cls ? '.' + cls : ''} ` +
                        `'${(e.textContent || '').trim().slice(0, 50)}'`);
    }
  }
  return out;
}
"""


@dataclass
class Page:
    """What the browser saw on one page."""

    path: Path
    errors: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)


def html_pages(build: Path) -> list[Path]:
    """Every HTML page of the book, not the theme's assets nor another edition's pages.

    A translated edition lives in a folder of the English one (``_build/html/zh``) with a
    ``search.html`` of its own; it is checked by a run of its own.
    """
    editions = {d.name for d in build.iterdir() if (d / "search.html").exists()}
    return sorted(
        p
        for p in build.rglob("*.html")
        if not (SKIP_DIRS | editions).intersection(p.relative_to(build).parts[:-1])
    )


def expected_api_ids() -> set[str]:
    """The HTML ids autodoc gives every public name of normtut.

    ``normtut.__all__`` (a module in it: ``module-normtut.NAME`` and each of its public
    functions and classes), ``normtut.experiments.__all__`` likewise.
    """
    ids: set[str] = set()
    for package_name in ("normtut", "normtut.experiments"):
        package = importlib.import_module(package_name)
        for name in package.__all__:
            obj = getattr(package, name)
            if isinstance(obj, types.ModuleType):
                ids.add(f"module-{obj.__name__}")
                ids.update(f"{obj.__name__}.{n}" for n in module_public_names(obj))
            else:
                ids.add(f"{package_name}.{name}")
    return ids


def module_public_names(module: types.ModuleType) -> list[str]:
    """Functions and classes a module defines (not imports), without a leading underscore."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
    ]


def url_to_path(url: str) -> tuple[Path, str] | None:
    """(file, fragment) of a file:// URL, or None for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    return Path(unquote(parts.path)), unquote(parts.fragment)


def check_links(pages: dict[Path, Page], build: Path) -> list[str]:
    """Internal links whose file or #anchor does not exist."""
    ids = {path.resolve(): set(page.data.get("ids", [])) for path, page in pages.items()}
    problems = []
    for path, page in pages.items():
        seen = set()
        for link in page.data.get("links", []):
            target = url_to_path(link["href"])
            if target is None or link["href"] in seen:
                continue
            seen.add(link["href"])
            file, fragment = target
            if not file.exists():
                problems.append(f"{rel(path, build)}: link to missing {file} ({link['text']!r})")
            elif fragment and file.suffix == ".html":
                anchors = ids.get(file.resolve())
                if anchors is not None and fragment not in anchors:
                    problems.append(
                        f"{rel(path, build)}: link to {rel(file, build)}#{fragment},"
                        f" which has no such anchor ({link['text']!r})"
                    )
    return problems


def rel(path: Path, build: Path) -> str:
    try:
        return str(path.resolve().relative_to(build.resolve()))
    except ValueError:
        return str(path)


def layout_lines(page: Page, build: Path) -> tuple[list[str], list[str]]:
    """(problems, exempted): one line per element wider than the text column."""
    problems, exempted = [], []
    for w in page.data.get("wide", []):
        where = f" in '{w['section']}'" if w["section"] else ""
        line = (
            f"{rel(page.path, build)}: {w['kind']}{where} is {w['px']} px too wide"
            f" (longest line {w['chars']} chars: {w['line']!r})"
        )
        if w["kind"] == "output" and w["tensor"]:
            exempted.append(line)
        else:
            problems.append(line)
    if page.data.get("page_width", 0) > page.data.get("viewport", 10**9):
        culprits = "; ".join(page.data.get("culprits", [])[:3])
        problems.append(
            f"{rel(page.path, build)}: the page scrolls sideways"
            f" ({page.data['page_width']} px in a {page.data['viewport']} px window: {culprits})"
        )
    return problems, exempted


def visit(tab, path: Path, width: int) -> Page:
    """Load one page, wait for MathJax and fonts, measure it."""
    page = Page(path)
    redirect = REDIRECT.search(path.read_text(encoding="utf-8", errors="replace"))
    if redirect:  # index.html: a bare redirect, checked as a link
        target = (path.parent / redirect.group(1)).resolve().as_uri()
        page.data = {"links": [{"href": target, "text": "redirect"}], "viewport": width}
        return page
    tab.set_viewport_size({"width": width, "height": HEIGHT})
    tab.on_errors = page.errors  # the listeners append here
    tab.goto(path.resolve().as_uri(), wait_until="load")
    tab.evaluate(
        "async () => { if (window.MathJax && MathJax.startup) await MathJax.startup.promise;"
        " await document.fonts.ready; }"
    )
    page.data = tab.evaluate(MEASURE_JS)
    page.data["viewport"] = width
    return page


def open_tab(context):
    """A tab whose JavaScript errors and failed requests land in ``tab.on_errors``."""
    tab = context.new_page()
    tab.on_errors = []
    tab.on("pageerror", lambda e: tab.on_errors.append(f"JavaScript error: {e}"))
    tab.on(
        "console",
        lambda m: m.type == "error" and tab.on_errors.append(f"console.error: {m.text}"),
    )
    tab.on(
        "requestfailed",
        lambda r: tab.on_errors.append(f"request failed: {r.url} ({r.failure})"),
    )
    return tab


def search_hits(tab, build: Path, term: str) -> int:
    """Number of results the book's search page lists for ``term``."""
    url = (build / "search.html").resolve().as_uri() + "?q=" + quote(term)
    tab.goto(url, wait_until="load")
    tab.wait_for_function(  # the summary line is written when the search has finished
        "() => { const s = document.querySelector('#search-results p.search-summary');"
        " return s && s.textContent.trim().length > 0; }",
        timeout=15000,
    )
    return tab.evaluate("() => document.querySelectorAll('#search-results li').length")


def chromium_path() -> str:
    """The system's Chromium; without it, an error that says how to install it."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(INSTALL_HINT)


@dataclass
class Report:
    """Everything one run found."""

    pages: int = 0
    failures: list[str] = field(default_factory=list)
    exempted: list[str] = field(default_factory=list)  # tensor outputs at 1280 px
    phone: list[str] = field(default_factory=list)  # wider than the column at 420 px
    uncited: list[str] = field(default_factory=list)  # bibliography entries nobody cites
    cited: int = 0
    hits: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cpu: float = 0.0  # this process, Playwright's driver and Chromium


def run(build: Path, terms: list[str], screenshots: Path | None = None) -> Report:
    """Visit every page of ``build`` at both widths and collect what is wrong."""
    executable = chromium_path()
    from playwright.sync_api import sync_playwright  # after the Chromium check

    start = time.perf_counter()
    cpu = time.process_time() + children_cpu()
    paths = html_pages(build)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        context = browser.new_context(viewport={"width": DESKTOP, "height": HEIGHT})
        tab = open_tab(context)
        desktop = {path: visit(tab, path, DESKTOP) for path in paths}
        phone_tab = open_tab(context)
        phone = {path: visit(phone_tab, path, PHONE) for path in paths}
        tab.on_errors = []
        hits = {term: search_hits(tab, build, term) for term in terms}
        search_errors = list(tab.on_errors)
        if screenshots:
            save_screenshots(tab, paths, build, screenshots)
        browser.close()

    report = Report(pages=len(paths), hits=hits)
    for page in desktop.values():
        failures, exempted = page_problems(page, build)
        report.failures += failures
        report.exempted += exempted
    report.failures += check_links(desktop, build)
    report.failures += [f"search: {e}" for e in dict.fromkeys(search_errors)]
    report.failures += [f"search: no result for {t!r}" for t, n in hits.items() if n == 0]
    report.failures += check_api(desktop)
    for page in phone.values():
        report.failures += [f"{rel(page.path, build)} at {PHONE} px: {e}" for e in page.errors]
        problems, exempted = layout_lines(page, build)
        report.phone += problems + [f"{line} [tensor output]" for line in exempted]
    report.cited, report.uncited = citations(desktop)
    report.seconds = time.perf_counter() - start
    report.cpu = time.process_time() + children_cpu() - cpu
    return report


def children_cpu() -> float:
    """CPU seconds of the finished child processes (Playwright's driver and Chromium)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def page_problems(page: Page, build: Path) -> tuple[list[str], list[str]]:
    """(failures, exempted tensor outputs) of one page at the desktop width."""
    name = rel(page.path, build)
    failures = [f"{name}: {e}" for e in dict.fromkeys(page.errors)]
    d = page.data
    if "math" not in d:
        return failures, []  # a redirect: only its link is checked
    if d["math"] and not d["rendered"]:
        failures.append(f"{name}: {d['math']} math elements and no MathJax output")
    failures += [f"{name}: unrendered math: {t!r}" for t in d["unrendered"]]
    failures += [f"{name}: TeX left in the text: {t!r}" for t in d["stray_tex"]]
    failures += [f"{name}: image does not load: {src}" for src in d["images"]]
    source = build / "_sources" / page.path.relative_to(build).with_suffix(".ipynb")
    if source.exists() and not any(h.endswith(".ipynb") for h in d["download"]):
        failures.append(f"{name}: notebook page without a link to download its .ipynb")
    problems, exempted = layout_lines(page, build)
    return failures + problems, exempted


def check_api(pages: dict[Path, Page]) -> list[str]:
    """Public names of normtut without an entry in the API reference (if it is built)."""
    ids = set().union(*(set(p.data.get("ids", [])) for p in pages.values()))
    if "module-normtut" not in ids:
        return []  # no API reference in this build
    return [f"API reference: no entry for {name}" for name in sorted(expected_api_ids() - ids)]


def citations(pages: dict[Path, Page]) -> tuple[int, list[str]]:
    """(number of cited entries, texts of the uncited ones) of the bibliography page."""
    bibliography = next((p for p in pages if p.name == "bibliography.html"), None)
    if bibliography is None:
        return 0, []
    cited = set()
    for page in pages.values():
        if page.path == bibliography:
            continue
        for link in page.data.get("links", []):
            target = url_to_path(link["href"])
            if target and target[0].resolve() == bibliography.resolve():
                cited.add(target[1])
    entries = pages[bibliography].data.get("list_items", [])
    uncited = [text for id_, text in entries if id_ not in cited]
    return len(entries) - len(uncited), uncited


def save_screenshots(tab, paths: list[Path], build: Path, out: Path) -> None:
    """Full-page PNGs of every page at both widths, named like the page."""
    out.mkdir(parents=True, exist_ok=True)
    for width in (DESKTOP, PHONE):
        for path in paths:
            visit(tab, path, width)
            name = rel(path, build).replace("/", "_").removesuffix(".html")
            tab.screenshot(path=str(out / f"{name}-{width}.png"), full_page=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build", nargs="?", default="_build/html", type=Path)
    parser.add_argument(
        "--search",
        nargs="*",
        default=["BatchNorm2d", "momentum"],
        metavar="TERM",
        help="terms that occur in the book and that its search must find"
        " (default: BatchNorm2d momentum)",
    )
    parser.add_argument(
        "--screenshots", type=Path, metavar="DIR", help="also save full-page screenshots here"
    )
    args = parser.parse_args(argv)
    if not (args.build / "index.html").exists():
        sys.exit(f"{args.build}/index.html not found: build the book first (make bookcheck)")
    try:
        report = run(args.build, args.search, args.screenshots)
    except FileNotFoundError as missing:
        sys.exit(str(missing))

    print(f"At {PHONE} px (a phone), wider than the text column; reported, not failed:")
    print("\n".join(f"  {line}" for line in report.phone) or "  nothing")
    if report.exempted:
        print(f"Exempt at {DESKTOP} px (tensor outputs scroll inside their box):")
        print("\n".join(f"  {line}" for line in report.exempted))
    cited = report.cited + len(report.uncited)
    print(f"Bibliography: {report.cited} of {cited} entries cited in the text.")
    if report.uncited:
        print("\n".join(f"  not cited yet: {text}" for text in report.uncited))
    print(
        f"\nbrowser check of {args.build}: {report.pages} pages at {DESKTOP} and {PHONE} px,"
        f" search hits {report.hits}; {report.seconds:.1f} s,"
        f" {report.cpu:.1f} s CPU (Chromium included)"
    )
    if report.failures:
        print(f"FAILED: {len(report.failures)} problem(s)")
        print("\n".join(f"  {line}" for line in report.failures))
        return 1
    print("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
