"""tools/catalogs.py: which messages need a translation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("catalogs", ROOT / "tools" / "catalogs.py")
catalogs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(catalogs)


@pytest.mark.parametrize("msgid", ["1.29", "15.536", "0.92", "3 × 4", "—", "≤ 2.0"])
def test_cells_without_words_are_not_messages(msgid):
    assert not catalogs.translatable(msgid)


@pytest.mark.parametrize("msgid", ["LeNet, 8x8 digits", "folded", "x", "归一化", "`eps`"])
def test_anything_with_a_letter_is_translated(msgid):
    assert catalogs.translatable(msgid)
