from __future__ import annotations

import re

import pytest

from manifest.errors import ConfigError
from manifest.globs import PathFilter, glob_to_regex


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*.csv", "a.csv", True),
        ("*.csv", "dir/a.csv", False),
        ("**/*.csv", "a.csv", True),
        ("**/*.csv", "x/y/z/a.csv", True),
        ("**/*.csv", "x/a.txt", False),
        ("concepts/**", "concepts/a/b.txt", True),
        ("concepts/**", "concepts2/a.txt", False),
        ("a/**/b.txt", "a/b.txt", True),
        ("a/**/b.txt", "a/x/y/b.txt", True),
        ("file?.txt", "file1.txt", True),
        ("file?.txt", "file/.txt", False),
        ("[ab].csv", "b.csv", True),
        ("[!ab].csv", "b.csv", False),
        ("[!ab].csv", "c.csv", True),
        ("weird[.csv", "weird[.csv", True),
        ("a+b(1).csv", "a+b(1).csv", True),
    ],
)
def test_glob_semantics(pattern: str, path: str, matches: bool) -> None:
    assert (re.fullmatch(glob_to_regex(pattern), path) is not None) is matches


def test_filter_include_and_exclude() -> None:
    f = PathFilter(include=["**/*.csv"], exclude=["tmp/**"])
    assert f.wants_file("a/b.csv")
    assert not f.wants_file("a/b.txt")
    assert not f.wants_file("tmp/b.csv")
    assert f.skips_dir("tmp")
    assert not f.skips_dir("a")


def test_default_filter_takes_everything() -> None:
    f = PathFilter()
    assert f.everything and f.wants_file("anything/at/all")


def test_absolute_glob_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="RAW_SCAN_EXCLUDE"):
        PathFilter(exclude=["/etc/**"])
