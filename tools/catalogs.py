"""The translations' message catalogs: update them, and check they keep up with the source.

    python tools/catalogs.py update [--language zh_CN]   # make translations
    python tools/catalogs.py check [--language zh_CN]    # part of make test

Both extract the book's messages (Sphinx's gettext builder: every markdown paragraph, heading,
list item and table cell of every page; code and outputs are not messages, nor are cells
without words, such as numbers) and compare
them with ``locales/<language>/LC_MESSAGES/``. ``update`` brings the catalogs in line
with the source (sphinx-intl: new messages empty, changed ones marked fuzzy, messages the
source lost removed). ``check`` fails when

- a page has no catalog, or a catalog belongs to no page;
- the catalogs are stale: a message of the source is missing from its catalog, or a
  catalog holds a message the source no longer has (``make translations`` updates them);
- a message has no translation, or its translation is marked fuzzy (the English changed
  since it was translated: check the translation, then delete the ``#, fuzzy`` line).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
# Templates without a creation time: re-extracting an unchanged book changes no catalog.
os.environ.setdefault("SOURCE_DATE_EPOCH", "0")
# Pages whose text is not translated: the API reference is normtut's docstrings, which change
# with the code; the Chinese edition shows it in English.
UNTRANSLATED = {Path("book/api")}


def extract(pot_dir: Path) -> None:
    """Write the source's message templates (.pot, one per page) into ``pot_dir``."""
    from build_edition import sphinx  # (tools/, beside this script)

    status = sphinx(pot_dir, pot_dir.parent / ".doctrees-gettext", {}, builder="gettext")
    if status != 0:
        raise SystemExit(f"catalogs: extracting the messages failed ({status})")
    for page in UNTRANSLATED:
        (pot_dir / page).with_suffix(".pot").unlink(missing_ok=True)
    for pot in pot_dir.rglob("*.pot"):  # keep only messages with words in them
        with open(pot, "rb") as f:
            template = read_po(f)
        for message in list(template):
            if message.id and not translatable(message.id):
                template.delete(message.id, message.context)
        with open(pot, "wb") as f:
            write_po(f, template, width=76)


def translatable(msgid: str) -> bool:
    """Whether a message has words to translate: a table cell such as ``1.29`` or ``0.92``
    (the bench results chapter 12 renders) reads the same in every language, and leaving it
    out of the catalogs keeps a new bench run from making them stale."""
    return any(ch.isalpha() for ch in msgid)


def messages(path: Path) -> dict[str, object]:
    """msgid -> babel Message, for every message of a .pot/.po file (header and obsolete aside)."""
    with open(path, "rb") as f:
        catalog = read_po(f)
    return {m.id: m for m in catalog if m.id}


def problems(pot_dir: Path, po_dir: Path) -> list[str]:
    """Everything that is wrong with the catalogs in ``po_dir`` against ``pot_dir``."""
    found: list[str] = []
    pots = {p.relative_to(pot_dir).with_suffix(""): p for p in pot_dir.rglob("*.pot")}
    pos = {p.relative_to(po_dir).with_suffix(""): p for p in po_dir.rglob("*.po")}
    for page in sorted(pos.keys() - pots.keys()):
        found.append(f"{page}.po: no such page in the book (delete the catalog)")
    for page, pot in sorted(pots.items()):
        if page not in pos:
            found.append(f"{page}: no catalog (run `make translations`, then translate)")
            continue
        source, translated = messages(pot), messages(pos[page])
        stale_new = source.keys() - translated.keys()
        stale_old = translated.keys() - source.keys()
        if stale_new or stale_old:
            found.append(
                f"{page}.po: stale ({len(stale_new)} new, {len(stale_old)} gone from the source;"
                " run `make translations`)"
            )
        for msgid, m in translated.items():
            if msgid not in source:
                continue
            first = msgid.splitlines()[0][:60]
            if m.fuzzy:
                found.append(f"{page}.po: fuzzy: {first!r}")
            elif not m.string:
                found.append(f"{page}.po: untranslated: {first!r}")
    return found


def update(pot_dir: Path, language: str) -> None:
    """Bring ``language``'s catalogs in line with the templates in ``pot_dir``.

    New messages arrive empty; a changed message keeps the translation of the closest old
    one, marked fuzzy, with the old English kept as ``#| msgid`` so the translator sees
    what changed; messages the source lost are dropped; so are catalogs of lost pages.
    """
    po_dir = ROOT / "locales" / language / "LC_MESSAGES"
    pots = {p.relative_to(pot_dir).with_suffix(""): p for p in pot_dir.rglob("*.pot")}
    for po in po_dir.rglob("*.po"):
        if po.relative_to(po_dir).with_suffix("") not in pots:
            po.unlink()
    for page, pot in sorted(pots.items()):
        with open(pot, "rb") as f:
            template = read_po(f)
        po = (po_dir / page).with_suffix(".po")
        if po.exists():
            with open(po, "rb") as f:
                catalog = read_po(f, locale=language)
            for message in catalog:  # the previous English of the last update: obsolete now
                message.user_comments = [c for c in message.user_comments if c[:1] != "|"]
            catalog.update(template)
        else:
            catalog = Catalog(locale=language, project="normtut", fuzzy=False)
            catalog.update(template)
        po.parent.mkdir(parents=True, exist_ok=True)
        with open(po, "wb") as f:
            write_po(f, catalog, width=76, ignore_obsolete=True, include_previous=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("check", "update"))
    parser.add_argument("--language", default="zh_CN")
    args = parser.parse_args(argv)
    po_dir = ROOT / "locales" / args.language / "LC_MESSAGES"
    with tempfile.TemporaryDirectory() as tmp:
        pot_dir = Path(tmp) / "gettext"
        extract(pot_dir)
        if args.command == "update":
            update(pot_dir, args.language)
        found = problems(pot_dir, po_dir)
    total = sum(len(messages(p)) for p in po_dir.rglob("*.po"))
    if args.command == "update":
        print(f"{args.language} catalogs updated: {total} messages, {len(found)} to translate")
        return 0
    if found:
        print(f"{len(found)} problem(s) with the {args.language} catalogs:")
        for line in found:
            print("  " + line)
        return 1
    print(f"{args.language} catalogs: {total} messages, all translated and current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
