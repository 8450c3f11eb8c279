"""Diffs between trees, skipping identical subtrees by id."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from manifest.model import (
    KIND_FILE,
    KIND_TREE,
    ChangeSet,
    Tree,
    TreeEntry,
    decode_object,
    path_to_text,
)
from manifest.store.objects import Objects

if TYPE_CHECKING:
    from manifest.scanresult import TreeSource

TreeReader = Callable[[str], Tree]


def tree_reader(
    objects: Objects, extra: Mapping[str, bytes] | TreeSource | None = None
) -> TreeReader:
    """Read trees from ``extra`` (a scan's in-memory trees) first, then from the store."""

    def read(oid: str) -> Tree:
        if extra is not None:
            data = extra.get(oid)
            if data is not None:
                obj = decode_object(data)
                assert isinstance(obj, Tree)
                return obj
        return objects.read_tree(oid)

    return read


def iter_files(
    read: TreeReader, tree_id: str, prefix: bytes = b""
) -> Iterator[tuple[bytes, TreeEntry]]:
    """Every non-tree entry below ``tree_id`` as ``(relative path, entry)``, in path order
    (iteratively: no depth is too deep)."""
    stack: list[tuple[bytes, Iterator[TreeEntry]]] = [(prefix, iter(read(tree_id).entries))]
    while stack:
        base, entries = stack[-1]
        for entry in entries:
            path = base + entry.name
            if entry.kind == KIND_TREE:
                stack.append((path + b"/", iter(read(entry.digest.hex()).entries)))
                break
            yield path, entry
        else:
            stack.pop()


def same_entry(old: TreeEntry, new: TreeEntry) -> bool:
    """Equal, except that a file digest missing on one side is not a difference: in
    ``mtime_size`` mode a digest is only known after a full-hash check."""
    if old == new:
        return True
    return (
        old.kind == new.kind == KIND_FILE
        and old.size == new.size
        and old.mtime_ns == new.mtime_ns
        and (not old.digest or not new.digest)
    )


EntryPair = tuple[TreeEntry | None, TreeEntry | None]


def diff_trees(
    read: TreeReader,
    old_id: str | None,
    new_id: str | None,
    *,
    renames: bool = True,
    entries: dict[str, EntryPair] | None = None,
) -> ChangeSet:
    """``added``/``modified``/``removed`` between two root trees (None = empty tree).

    With ``renames`` (content mode), a removed and an added entry of the same kind with the
    same digest are also reported as a rename, for display. With ``entries``, the two entries
    compared for each changed path are collected there too (dvc-data's ``Change(old, new)``),
    so no caller reads a tree again to learn a fingerprint."""
    added: list[bytes] = []
    modified: list[bytes] = []
    removed: list[bytes] = []
    # (kind, digest): a file and a symlink whose target text equals its bytes are no rename
    removed_digest: dict[bytes, tuple[int, bytes]] = {}
    added_digest: dict[bytes, tuple[int, bytes]] = {}

    renames = renames and old_id is not None  # nothing removed from an empty tree
    # An explicit stack of folder pairs to compare: no depth is too deep.
    stack: list[tuple[str | None, str | None, bytes]] = [(old_id, new_id, b"")]
    while stack:
        old, new, prefix = stack.pop()
        if old == new:
            continue
        if old is None or new is None:
            # a whole folder added or removed: every entry below is, no pairing needed
            side = added if old is None else removed
            digests = added_digest if old is None else removed_digest
            for e in read(new if old is None else old).entries:  # type: ignore[arg-type]
                path = prefix + e.name
                if e.kind == KIND_TREE:
                    hexid = e.digest.hex()
                    stack.append(
                        (None, hexid, path + b"/") if old is None else (hexid, None, path + b"/")
                    )
                    continue
                side.append(path)
                if entries is not None:
                    entries[path_to_text(path)] = (None, e) if old is None else (e, None)
                if e.digest and renames:
                    digests[path] = (e.kind, e.digest)
            continue
        old_entries = {e.name: e for e in read(old).entries} if old else {}
        new_entries = {e.name: e for e in read(new).entries} if new else {}
        for name in sorted(old_entries.keys() | new_entries.keys()):
            o = old_entries.get(name)
            n = new_entries.get(name)
            path = prefix + name
            if o is not None and n is not None and same_entry(o, n):
                continue
            o_tree = o is not None and o.kind == KIND_TREE
            n_tree = n is not None and n.kind == KIND_TREE
            if o_tree or n_tree:
                stack.append(
                    (
                        o.digest.hex() if o_tree and o else None,
                        n.digest.hex() if n_tree and n else None,
                        path + b"/",
                    )
                )
            if entries is not None and not (o_tree and n_tree):
                entries[path_to_text(path)] = (
                    None if o_tree else o,
                    None if n_tree else n,
                )
            if o is not None and n is not None and not o_tree and not n_tree:
                modified.append(path)
                continue
            if o is not None and not o_tree:
                removed.append(path)
                if o.digest and renames:
                    removed_digest[path] = (o.kind, o.digest)
            if n is not None and not n_tree:
                added.append(path)
                if n.digest and renames:
                    added_digest[path] = (n.kind, n.digest)

    return _change_set(added, modified, removed, added_digest, removed_digest)


def _change_set(
    added: list[bytes],
    modified: list[bytes],
    removed: list[bytes],
    added_digest: dict[bytes, tuple[int, bytes]],
    removed_digest: dict[bytes, tuple[int, bytes]],
) -> ChangeSet:
    renamed: list[tuple[str, str]] = []
    if added_digest and removed_digest:
        by_digest: dict[tuple[int, bytes], list[bytes]] = {}
        for path in sorted(removed_digest):
            by_digest.setdefault(removed_digest[path], []).append(path)
        for path in sorted(added_digest):
            olds = by_digest.get(added_digest[path])
            if olds:
                renamed.append((path_to_text(olds.pop(0)), path_to_text(path)))
    return ChangeSet(
        added=tuple(sorted(map(path_to_text, added))),
        modified=tuple(sorted(map(path_to_text, modified))),
        removed=tuple(sorted(map(path_to_text, removed))),
        renamed=tuple(renamed),
    )
