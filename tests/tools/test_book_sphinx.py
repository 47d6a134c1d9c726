"""tools/book_sphinx.py: the help text the API page shows, and the duplicate-script repair."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from sphinx.builders.html._assets import _JavaScript

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("book_sphinx", ROOT / "tools" / "book_sphinx.py")
book_sphinx = importlib.util.module_from_spec(spec)
sys.modules["book_sphinx"] = book_sphinx
spec.loader.exec_module(book_sphinx)


def test_parser_of_returns_the_cli_parser_and_runs_nothing() -> None:
    from normtut.experiments.__main__ import main

    parser = book_sphinx.parser_of(main)
    assert isinstance(parser, argparse.ArgumentParser)
    assert parser.prog == "python -m normtut.experiments"
    assert argparse.ArgumentParser.parse_args is not None  # restored
    assert parser.parse_args(["small-batch"]).command == "small-batch"


def test_help_texts_cover_every_subcommand_within_80_columns() -> None:
    from normtut.experiments.__main__ import main

    texts = book_sphinx.help_texts(book_sphinx.parser_of(main))
    progs = [prog for prog, _ in texts]
    assert progs[0] == "python -m normtut.experiments"
    assert "python -m normtut.experiments small-batch" in progs
    assert all(len(line) <= 80 for _, text in texts for line in text.splitlines())


def test_duplicate_inline_scripts_are_dropped() -> None:
    body = 'const THEBE_JS_URL = "x"'
    scripts = [
        _JavaScript(None, priority=500, body=body),  # added through app.add_js_file
        _JavaScript("_static/a.js"),
        _JavaScript("", priority=500, body=body),  # the copy Sphinx 7.4 adds again
        _JavaScript("_static/a.js"),
    ]
    context = {"script_files": scripts}
    book_sphinx.drop_duplicate_scripts(None, "page", "page.html", context, None)
    assert context["script_files"] == [scripts[0], scripts[1]]
