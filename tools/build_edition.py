"""Build the book in another language from the same sources and the message catalogs.

    python tools/build_edition.py zh_CN [--strict]

Jupyter Book's own command builds the English edition into ``_build/html``; this builds
an edition whose prose comes from ``locales/<language>/LC_MESSAGES/`` into
``_build/html/<short>/`` (``zh`` for ``zh_CN``), so that both editions form one site and
every page can link to its twin. It runs Jupyter Book's Sphinx build with the same
``_config.yml`` and one override, ``language``; code cells and stored outputs are the
notebooks' own, so they are identical in both editions. ``--strict`` turns warnings
into errors and reports unresolved references (as ``jupyter-book build -W -n``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jupyter_book.sphinx import build_sphinx

ROOT = Path(__file__).resolve().parent.parent
EDITIONS = {"zh_CN": "zh"}  # language -> folder under _build/html
# Settings whose English text lives in _config.yml or in an extension's setup, not on a page:
# the message catalogs cannot reach them.
OVERRIDES = {
    "zh_CN": {
        "html_title": "normtut：彻底搞懂 PyTorch 的归一化层",
        "togglebutton_hint": "点击展开",  # the hidden solutions' button
        "togglebutton_hint_hide": "点击收起",
    },
}

REDIRECT = '<meta http-equiv="Refresh" content="0; url=book/intro.html" />\n'


def sphinx(
    out: Path, doctrees: Path, overrides: dict, builder: str = "html", strict: bool = False
) -> int:
    """Jupyter Book's Sphinx build of the whole book, from scratch, with ``_config.yml`` and
    ``overrides``, into ``out``; returns Sphinx's exit status (0: success)."""
    return build_sphinx(
        ROOT,
        out,
        noconfig=True,
        path_config=str(ROOT / "_config.yml"),
        confoverrides={"latex_individualpages": False, **overrides},
        doctreedir=doctrees,
        builder=builder,
        force_all=True,
        freshenv=True,
        warningiserror=strict,
        keep_going=strict,
        quiet=True,
    )


def build(language: str, strict: bool = False) -> int:
    """Build the ``language`` edition; return Sphinx's exit status (0: success)."""
    out = ROOT / "_build" / "html" / EDITIONS[language]
    overrides = {"language": language, **OVERRIDES[language]}
    if strict:
        overrides["nitpicky"] = True
    status = sphinx(out, ROOT / "_build" / f".doctrees-{language}", overrides, strict=strict)
    if status == 0:
        (out / "index.html").write_text(REDIRECT)  # as Jupyter Book writes for English
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("language", choices=sorted(EDITIONS))
    parser.add_argument("--strict", action="store_true", help="warnings are errors (-W -n)")
    args = parser.parse_args(argv)
    status = build(args.language, args.strict)
    if status == 0:
        print(
            f"Open the {args.language} edition: file://{ROOT}/_build/html/"
            f"{EDITIONS[args.language]}/index.html"
        )
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
