"""The book's local Sphinx extension (``sphinx: local_extensions`` in ``_config.yml``).

Two directives for the API reference (``book/api.md``):

``automodules PACKAGE``
    One section per submodule named in ``PACKAGE.__all__``, each holding
    ``.. automodule:: PACKAGE.NAME`` with its members. A module an engineer adds to
    ``__all__`` gets its section without an edit to the page.

``program-help MODULE``
    The ``--help`` of the command line ``python -m MODULE`` and of each of its
    subcommands, taken from the very ``argparse`` parser that ``MODULE.__main__.main``
    builds, so the page cannot drift from the program.

A citation style: author-year in round brackets, "Ioffe and Szegedy (2015)" and
"(Wu and He, 2018)" (``bibtex_reference_style: author_year_round``; sphinxcontrib-bibtex's
own ``author_year`` uses square ones).

Two things a translated edition needs that the stack does not do:

- exercise titles as messages: sphinx-exercise builds the title of ``{exercise} Title``
  without a source, so Sphinx's gettext skips it; the ``exercise`` directive here is
  sphinx-exercise's with the title's source recorded, and for the gettext builder its
  post-transform that folds the title into "Exercise N (Title)" is skipped, so that the
  title is extracted like any heading (the HTML builders are unchanged);
- part captions of the table of contents translated: sphinx-external-toc inserts the
  toctrees (priority 100) after Sphinx has translated the page (priority 20), so
  ``TranslateTocCaptions`` translates their captions with the page's own catalog.

Two repairs of the stack: Sphinx 7.4 writes every inline ``<script>`` that an extension
adds after the builder starts twice (sphinx-thebe's ``const THEBE_JS_URL = ...`` then
throws "Identifier 'THEBE_JS_URL' has already been declared" on every page), so each page
keeps one copy; and sphinx-thebe writes its Binder settings, naming a sample repository,
into every page although no launch button is on: they are dropped.
"""

from __future__ import annotations

import argparse
import importlib
import os
import types
from collections.abc import Callable
from dataclasses import dataclass, field

from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.locale import init as init_locale
from sphinx.transforms import SphinxTransform
from sphinx.util.docutils import SphinxDirective
from sphinx.util.i18n import docname_to_domain
from sphinx.util.nodes import nested_parse_with_titles
from sphinx_exercise import post_transforms as exercise_post_transforms
from sphinx_exercise.directive import ExerciseDirective
from sphinx_exercise.nodes import exercise_enumerable_node, exercise_node, exercise_subtitle
from sphinxcontrib.bibtex.plugin import register_plugin
from sphinxcontrib.bibtex.style.referencing import BracketStyle
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle

HELP_COLUMNS = 80  # argparse wraps help text to $COLUMNS - 2


def round_brackets() -> BracketStyle:
    return BracketStyle(left="(", right=")")


@dataclass
class AuthorYearRound(AuthorYearReferenceStyle):
    """Author-year citations in round brackets."""

    bracket_parenthetical: BracketStyle = field(default_factory=round_brackets)
    bracket_textual: BracketStyle = field(default_factory=round_brackets)
    bracket_author: BracketStyle = field(default_factory=round_brackets)
    bracket_label: BracketStyle = field(default_factory=round_brackets)
    bracket_year: BracketStyle = field(default_factory=round_brackets)


class AutoModules(SphinxDirective):
    """A section with ``automodule`` for every submodule in a package's ``__all__``."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        package = importlib.import_module(self.arguments[0])
        out: list[nodes.Node] = []
        for name in getattr(package, "__all__", []):
            if not isinstance(getattr(package, name), types.ModuleType):
                continue
            modname = f"{package.__name__}.{name}"
            section = nodes.section(ids=[f"api-{modname.replace('.', '-')}"])
            # The short name as the title: the contents sidebar is narrow, and every entry
            # below spells out the full path anyway.
            section += nodes.title("", "", nodes.literal(name, name))
            nested_parse_with_titles(self.state, self.automodule(modname), section)
            out.append(section)
        return out

    def automodule(self, modname: str) -> StringList:
        """``automodule`` with members, as reStructuredText (autodoc writes rST) in the
        syntax of the page being parsed."""
        lines = [f".. automodule:: {modname}", "   :members:"]
        if type(self.state).__module__.startswith("myst_parser"):  # a MyST page
            lines = ["```{eval-rst}", *lines, "```"]
        return StringList(lines, source=modname)


def parser_of(main: Callable[[list[str]], object]) -> argparse.ArgumentParser:
    """The parser ``main`` builds: stop it at ``parse_args`` and keep the parser."""

    class CaughtParserError(Exception):
        pass

    original = argparse.ArgumentParser.parse_args

    def catch(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise CaughtParserError(self)

    argparse.ArgumentParser.parse_args = catch  # type: ignore[method-assign]
    try:
        main([])
    except CaughtParserError as caught:
        return caught.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise ExtensionError(f"{main.__module__}.main() returned without calling parse_args()")


def help_texts(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(prog, help) of the parser and of each subcommand, wrapped at HELP_COLUMNS."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    try:
        texts = [(parser.prog, parser.format_help())]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                    texts.append((sub.prog, sub.format_help()))
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    return texts


class ProgramHelp(SphinxDirective):
    """The ``--help`` of ``python -m MODULE`` and of its subcommands, as text blocks."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        main = importlib.import_module(f"{self.arguments[0]}.__main__").main
        parser = parser_of(main)
        out: list[nodes.Node] = []
        for prog, text in help_texts(parser):
            out.append(nodes.rubric("", "", nodes.literal(prog, prog)))
            block = nodes.literal_block(text, text, language="text")
            out.append(block)
        return out


def drop_duplicate_scripts(
    app: Sphinx, pagename: str, templatename: str, context: dict, doctree: object
) -> None:
    """Keep the first of identical ``<script>`` tags (same file or inline body, same attributes)."""
    if "script_files" not in context:
        return
    seen: set[tuple[str, str]] = set()
    unique = []
    for script in context["script_files"]:
        filename = getattr(script, "filename", script) or ""  # None and "" both mean inline
        key = (str(filename), repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def drop_thebe_config(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Remove the ``<script type="text/x-thebe-config">`` block sphinx-thebe appends."""
    if app.config.html_theme_options.get("launch_buttons", {}).get("thebe"):
        return  # thebe is in use: keep its settings
    for raw in list(doctree.findall(nodes.raw)):
        if "x-thebe-config" in raw.astext():
            raw.parent.remove(raw)


class TranslatableExercise(ExerciseDirective):
    """sphinx-exercise's ``exercise`` directive, whose title (the argument) is a message."""

    def run(self) -> list[nodes.Node]:
        result = super().run()
        if self.arguments:
            source, line = self.state_machine.get_source_and_line(self.lineno)
            for subtitle in result[0].findall(exercise_subtitle) if result else ():
                subtitle.rawsource = self.arguments[0]
                subtitle.source, subtitle.line = source, line
                subtitle.parent["translatable"] = False  # "Exercise" + title: not a message
        return result


_resolve_exercise_titles = exercise_post_transforms.ResolveTitlesInExercises.run


def _resolve_exercise_titles_except_for_gettext(self, **kwargs) -> None:
    if self.app.builder.name != "gettext":  # gettext extracts the title as it was written
        _resolve_exercise_titles(self, **kwargs)


exercise_post_transforms.ResolveTitlesInExercises.run = _resolve_exercise_titles_except_for_gettext


class RefreshExerciseRegistry(SphinxTransform):
    """Give sphinx-exercise's registry the translated exercises.

    Its directive files a copy of each exercise when it is parsed, before Sphinx translates
    the page; a solution's title ("Solution to Exercise N (Title)") is built from that copy.
    """

    default_priority = 25  # after Sphinx's Locale (20)

    def apply(self, **kwargs) -> None:
        registry = getattr(self.env, "sphinx_exercise_registry", {})
        for node in self.document.findall(
            lambda n: isinstance(n, exercise_node | exercise_enumerable_node)
        ):
            if node.get("label") in registry:
                registry[node["label"]]["node"] = node.deepcopy()


class TranslateTocCaptions(SphinxTransform):
    """Translate the captions of the toctrees sphinx-external-toc inserts (after i18n)."""

    default_priority = 101  # just after sphinx_external_toc's InsertToctrees (100)

    def apply(self, **kwargs) -> None:
        if not self.config.language or self.config.language == "en":
            return
        domain = docname_to_domain(self.env.docname, self.config.gettext_compact)
        dirs = [os.path.join(self.env.srcdir, d) for d in self.config.locale_dirs]
        catalog, found = init_locale(dirs, self.config.language, domain)
        if not found:
            return
        for toctree in self.document.findall(addnodes.toctree):
            if toctree.get("caption"):
                toctree["caption"] = catalog.gettext(toctree["caption"])


def setup(app: Sphinx) -> dict[str, object]:
    register_plugin("sphinxcontrib.bibtex.style.referencing", "author_year_round", AuthorYearRound)
    app.add_directive("automodules", AutoModules)
    app.add_directive("program-help", ProgramHelp)
    app.setup_extension("sphinx_exercise")  # first, so that its directive can be replaced
    app.add_directive("exercise", TranslatableExercise, override=True)
    app.add_transform(TranslateTocCaptions)
    app.add_transform(RefreshExerciseRegistry)
    app.connect("html-page-context", drop_duplicate_scripts)
    app.connect("doctree-resolved", drop_thebe_config, priority=900)  # after sphinx-thebe
    return {"parallel_read_safe": True, "parallel_write_safe": True}
