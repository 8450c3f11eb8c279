"""The compiled client of the watcher's command server (``manifest build-client``).

``manifest status`` answered by a running watcher costs Python's own start and little more;
on a small machine that start is most of it (~20 ms). The compiled client
(``native_client.c``, as Mercurial's chg is hg's) does the Python client's part
(:mod:`manifest.client`) without starting Python, and runs the Python program for
everything else. It is optional, and built for one installation: the interpreter and the
package folder are compiled in, and the watcher serves it only while they are the code it
runs (:func:`manifest.client.native_identity`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Final

from manifest.errors import BuildError

SOURCE: Final = Path(__file__).with_name("native_client.c")
NAME: Final = "manifest-fast"
FLAGS: Final = ("-O2", "-std=c99", "-Wall", "-Wextra")


def default_output() -> Path:
    """Beside this installation's ``manifest`` program (its scripts folder)."""
    return Path(sysconfig.get_path("scripts")) / NAME


def compiler() -> list[str] | None:
    """``$CC`` (with its flags), else the first of ``cc``, ``gcc``, ``clang`` found."""
    named = shlex.split(os.environ.get("CC", "").strip())
    for argv in [named] if named else [["cc"], ["gcc"], ["clang"]]:
        found = shutil.which(argv[0])
        if found is not None:
            return [found, *argv[1:]]
    return None


def c_string(text: str) -> str:
    """``text`` as a C string literal (bytes beyond printable ASCII in octal; ``?`` escaped,
    as C99 still reads trigraphs)."""
    out = []
    for byte in os.fsencode(text):
        char = chr(byte)
        if char in '"\\?':
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def build(output: Path, *, python: str | None = None) -> Path:
    """Compile the client to ``output`` (replaced atomically: a running copy keeps its
    file) for the interpreter ``python`` (default: this one) and this package."""
    from manifest import client

    if sys.platform != "linux":
        raise BuildError(
            f"it serves Linux only (the watcher's inotify), and this is {sys.platform}",
            "run manifest status: the watcher's server answers it",
        )
    cc = compiler()
    if cc is None:
        raise BuildError(
            "no C compiler found ($CC, cc, gcc or clang)",
            "install one (e.g. apt-get install gcc) or set CC; manifest status works without it",
        )
    python = os.path.abspath(python if python is not None else sys.executable)
    package = client._package(None)
    output = output.absolute()
    if not output.parent.is_dir():
        raise BuildError(f"{output.parent} is not a folder", "give an existing folder")
    temp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    argv = [
        *cc,
        *FLAGS,
        f"-DMANIFEST_PYTHON={c_string(python)}",
        f"-DMANIFEST_PACKAGE={c_string(package)}",
        "-o",
        str(temp),
        str(SOURCE),
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace")
    except OSError as exc:
        raise BuildError(f"{cc[0]} did not run ({exc.strerror})", "check $CC") from exc
    if done.returncode != 0 or not temp.is_file():
        temp.unlink(missing_ok=True)
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()[-5:]
        raise BuildError(
            f"{shlex.join(argv)} failed (exit {done.returncode}): " + " / ".join(said),
            "check the compiler, or set CC to another",
        )
    try:
        os.replace(temp, output)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise BuildError(f"cannot write {output} ({exc.strerror})", "check its folder") from exc
    return output
