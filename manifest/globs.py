"""Include/exclude globs with ``**`` semantics, matched against relative POSIX paths.

* ``*`` matches within one path component, ``?`` one character, ``[abc]``/``[!abc]`` a class.
* ``**`` as a whole component matches zero or more components: ``**/*.csv`` is every CSV,
  ``concepts/**`` everything under ``concepts``.
* Patterns are anchored at the data root: ``*.csv`` matches top-level CSVs only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from manifest.errors import ConfigError


def glob_to_regex(pattern: str) -> str:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                at_start = i == 0 or pattern[i - 1] == "/"
                j = i + 2
                if at_start and j < n and pattern[j] == "/":
                    out.append("(?:.*/)?")
                    i = j + 1
                    continue
                if at_start and j == n:
                    out.append(".*")
                    i = j
                    continue
                out.append("[^/]*")
                i = j
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                body = body.replace("\\", "\\\\")
                out.append(f"(?!/)[{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def compile_globs(patterns: Sequence[str], variable: str) -> re.Pattern[str] | None:
    """One regex matching any of ``patterns``; None when there are none."""
    if not patterns:
        return None
    parts = []
    for pattern in patterns:
        if pattern.startswith("/"):
            raise ConfigError(variable, pattern, "globs relative to the data root (no leading /)")
        parts.append(glob_to_regex(pattern))
    try:
        return re.compile("(?s:" + "|".join(f"(?:{p})" for p in parts) + r")\Z")
    except re.error as exc:
        raise ConfigError(variable, ",".join(patterns), f"valid globs ({exc})") from exc


class PathFilter:
    """Decides which files a scan records, and which folders it need not enter."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self.patterns = (tuple(include), tuple(exclude))
        self.include = compile_globs(include, "RAW_SCAN_INCLUDE")
        self.exclude = compile_globs(exclude, "RAW_SCAN_EXCLUDE")
        prunes = [p[:-3] for p in exclude if p.endswith("/**") and len(p) > 3]
        self.prune = compile_globs(prunes, "RAW_SCAN_EXCLUDE")
        self.everything = self.include is None and self.exclude is None

    def wants_file(self, rel_path: str) -> bool:
        if self.include is not None and not self.include.match(rel_path):
            return False
        return not (self.exclude is not None and self.exclude.match(rel_path))

    def skips_dir(self, rel_dir: str) -> bool:
        """True when an exclude ``<dir>/**`` covers everything below ``rel_dir``."""
        return self.prune is not None and self.prune.match(rel_dir) is not None
