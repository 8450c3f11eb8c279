"""Deterministic benchmark tree: ``python bench/gen_tree.py N DEST``.

N files of about 1 KB, 100 per folder, two levels deep (``d000/s00/f000.csv``; ten ``s``
folders per ``d`` folder), alternating ``.csv`` and ``.txt``. Contents are a pure function of
(seed, file index), every mtime is 2020-01-01T00:00:00Z. Prints a digest: BLAKE3 over the
sorted (path, content) pairs, so two runs (or two machines) can be compared.

The digest is written to ``DEST.digest`` (next to DEST, never inside it: the tree must hold
only the N files). If DEST exists and its marker matches, nothing is regenerated; the mtimes
are still reset to the fixed stamp (cheap), so a tree a benchmark touched is usable again.
``--verify`` re-reads every file and checks the digest instead of trusting the marker.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from blake3 import blake3

SEED = 20200101
FILES_PER_DIR = 100
SUBDIRS_PER_DIR = 10
FILES_PER_TOP = FILES_PER_DIR * SUBDIRS_PER_DIR
MTIME_NS = 1_577_836_800 * 10**9  # 2020-01-01T00:00:00Z
FORMAT = 1  # bump when the layout or contents change


def rel_path(i: int) -> str:
    d, rest = divmod(i, FILES_PER_TOP)
    s, f = divmod(rest, FILES_PER_DIR)
    ext = "csv" if i % 2 == 0 else "txt"
    return f"d{d:03d}/s{s:02d}/f{f:03d}.{ext}"


def content(i: int, seed: int = SEED) -> bytes:
    """About 1 KB (896..1151 bytes) of printable text derived from (seed, i)."""
    raw = blake3(f"{seed}:{i}".encode()).digest(length=640)
    size = 896 + raw[0]
    hexed = raw.hex().encode()  # 1280 printable bytes
    if i % 2 == 0:  # CSV: 8 fields of 8 hex digits per row
        rows = [
            b",".join(hexed[p + k : p + k + 8] for k in range(0, 64, 8))
            for p in range(0, len(hexed) - 64, 64)
        ]
        body = b"id,a,b,c,d,e,f,g\n" + b"\n".join(rows)
    else:  # text: 79-character lines
        body = b"\n".join(hexed[p : p + 79] for p in range(0, len(hexed), 79))
    return body[: size - 1] + b"\n"


def iter_files(n: int, seed: int = SEED) -> Iterator[tuple[str, bytes]]:
    """(path, content) in sorted path order (zero-padded names sort like the indices)."""
    for i in range(n):
        yield rel_path(i), content(i, seed)


def digest_of(pairs: Iterator[tuple[str, bytes]]) -> str:
    h = blake3()
    for path, data in pairs:
        p = path.encode()
        h.update(len(p).to_bytes(4, "little") + p + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def expected_digest(n: int, seed: int = SEED) -> str:
    return digest_of(iter_files(n, seed))


def marker_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".digest")


def marker_text(n: int, seed: int, digest: str) -> str:
    return f"format={FORMAT} n={n} seed={seed} digest={digest}\n"


def reset_mtimes(dest: Path, n: int) -> None:
    """Put back the fixed mtime where it changed (only there: utime also bumps the ctime,
    which would invalidate every stat cache and git index built on the tree)."""
    for i in range(n):
        path = dest / rel_path(i)
        if os.stat(path).st_mtime_ns != MTIME_NS:
            os.utime(path, ns=(MTIME_NS, MTIME_NS))


def read_digest(dest: Path, n: int) -> str:
    def pairs() -> Iterator[tuple[str, bytes]]:
        for i in range(n):
            path = rel_path(i)
            yield path, (dest / path).read_bytes()

    return digest_of(pairs())


def generate(n: int, dest: Path, seed: int = SEED, *, verify: bool = False) -> tuple[str, bool]:
    """Make sure DEST holds the tree; returns (digest, regenerated)."""
    want = expected_digest(n, seed)
    marker = marker_path(dest)
    if dest.is_dir() and marker.is_file() and marker.read_text() == marker_text(n, seed, want):
        if not verify or read_digest(dest, n) == want:
            reset_mtimes(dest, n)
            return want, False
        print(f"{dest}: contents do not match the marker; regenerating", file=sys.stderr)
    if dest.exists():
        shutil.rmtree(dest)
    marker.unlink(missing_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    h = blake3()
    made: set[str] = set()
    for path, data in iter_files(n, seed):
        folder = path.rpartition("/")[0]
        if folder not in made:
            (tmp / folder).mkdir(parents=True, exist_ok=True)
            made.add(folder)
        target = tmp / path
        with open(target, "wb") as fh:
            fh.write(data)
        os.utime(target, ns=(MTIME_NS, MTIME_NS))
        p = path.encode()
        h.update(len(p).to_bytes(4, "little") + p + len(data).to_bytes(8, "little"))
        h.update(data)
    got = h.hexdigest()
    assert got == want, (got, want)
    tmp.rename(dest)
    marker.write_text(marker_text(n, seed, got))
    return got, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="number of files")
    parser.add_argument("dest", type=Path, help="tree to create (keep it outside the repo)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--verify", action="store_true", help="re-read files, check digest")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("N must be >= 1")
    digest, made = generate(args.n, args.dest.absolute(), args.seed, verify=args.verify)
    print(digest)
    print(f"{'generated' if made else 'kept'} {args.n} files in {args.dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
