"""Text for people and for other systems: escape any path or message reversibly.

File names are bytes; undecodable bytes arrive as surrogates (``os.fsdecode``). Both faces
show them escaped the same way, so a hostile name never breaks a terminal, a Dagster tag or
a partition key.
"""

from __future__ import annotations

import unicodedata

C_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", '"': '\\"'}


def escape_text(text: str) -> str:
    """Escape control characters and undecodable bytes, never print them raw."""
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in "\n\t\r":
            out.append(C_ESCAPES[ch])
        elif unicodedata.category(ch)[0] == "C":
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


_UNPRINTED = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def escape_path(text: str) -> str:
    """A path as one line of printable text, reversibly (:func:`unescape_path` undoes it).

    Like :func:`escape_text`, plus: a backslash is doubled, control characters at or above
    0x80 use the ``\\uXXXX`` form (``\\xNN`` is kept for undecodable bytes), and the third
    dot of ``...`` is written ``\\x2e`` (Dagster refuses ``...`` in a partition key).
    """
    out: list[str] = []
    dots = 0
    for ch in text:
        code = ord(ch)
        if ch == ".":
            dots += 1
            out.append("\\x2e" if dots == 3 else ".")
            if dots == 3:
                dots = 0
            continue
        dots = 0
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in "\n\t\r":
            out.append(C_ESCAPES[ch])
        elif unicodedata.category(ch) in _UNPRINTED:
            if code < 0x80:
                out.append(f"\\x{code:02x}")
            else:
                out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


_C_UNESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape_path(text: str) -> str:
    """The inverse of :func:`escape_path`."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "\\" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt in _C_UNESCAPES:
            out.append(_C_UNESCAPES[nxt])
            i += 2
        elif nxt == "x":
            code = int(text[i + 2 : i + 4], 16)
            out.append(chr(0xDC00 + code) if code >= 0x80 else chr(code))
            i += 4
        elif nxt == "u":
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
        elif nxt == "U":
            out.append(chr(int(text[i + 2 : i + 10], 16)))
            i += 10
        else:
            raise ValueError(f"not an escaped path: {text!r}")
    return "".join(out)
