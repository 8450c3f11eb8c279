from __future__ import annotations

import os
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from manifest.text import escape_path, unescape_path

# Any file name bytes, decoded the way the scan decodes them.
names = st.binary(min_size=1, max_size=40).map(os.fsdecode)


@given(names)
def test_escape_path_round_trips_and_is_one_printable_line(text: str) -> None:
    escaped = escape_path(text)
    assert unescape_path(escaped) == text
    assert not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in escaped)
    assert "..." not in escaped  # Dagster refuses it in partition keys


def test_escape_path_examples() -> None:
    assert escape_path("notes/a b.txt") == "notes/a b.txt"
    assert escape_path("x\ny") == "x\\ny"
    assert escape_path(os.fsdecode(b"caf\xe9")) == "caf\\xe9"
    assert escape_path("a\\b") == "a\\\\b"
    assert escape_path("v...2") == "v..\\x2e2"
