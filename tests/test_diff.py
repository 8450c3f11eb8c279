from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from manifest.diff import diff_trees, iter_files
from manifest.model import KIND_FILE, KIND_TREE, ChangeSet, Tree, TreeEntry, encode_object
from manifest.store.objects import object_id

from .conftest import MakeRepo

Files = dict[bytes, bytes]  # path -> digest


def build(files: Files, store: dict[str, bytes]) -> str:
    """Build trees bottom-up from a flat listing; return the root id."""
    children: dict[bytes, Files] = {}
    here: list[TreeEntry] = []
    for path, digest in files.items():
        head, sep, rest = path.partition(b"/")
        if sep:
            children.setdefault(head, {})[rest] = digest
        else:
            here.append(TreeEntry(head, KIND_FILE, len(digest), 0, digest))
    for name, sub in children.items():
        sub_id = build(sub, store)
        here.append(TreeEntry(name, KIND_TREE, len(sub), 0, bytes.fromhex(sub_id)))
    here.sort(key=lambda e: e.name)
    data = encode_object(Tree(entries=tuple(here)))
    oid = object_id(data)
    store[oid] = data
    return oid


def reader(store: dict[str, bytes]):  # type: ignore[no-untyped-def]
    from manifest.model import decode_object

    def read(oid: str) -> Tree:
        obj = decode_object(store[oid])
        assert isinstance(obj, Tree)
        return obj

    return read


names = st.sampled_from([b"a", b"b", b"c.csv", b"d.txt", b"\xff"])
paths = st.lists(names, min_size=1, max_size=3).map(b"/".join)
listings = st.dictionaries(paths, st.binary(min_size=1, max_size=4), max_size=12).filter(
    # a path may not be both a file and a folder
    lambda d: not any(p != q and q.startswith(p + b"/") for p in d for q in d)
)


@given(files=listings, order=st.randoms())
def test_id_is_independent_of_walk_order(files: Files, order) -> None:  # type: ignore[no-untyped-def]
    items = list(files.items())
    order.shuffle(items)
    assert build(files, {}) == build(dict(items), {})


@given(a=listings)
def test_diff_of_a_tree_with_itself_is_empty(a: Files) -> None:
    store: dict[str, bytes] = {}
    root = build(a, store)
    assert diff_trees(reader(store), root, root) == ChangeSet()


@given(a=listings, b=listings)
def test_applying_diff_a_b_to_a_gives_b(a: Files, b: Files) -> None:
    store: dict[str, bytes] = {}
    ra, rb = build(a, store), build(b, store)
    read = reader(store)
    changes = diff_trees(read, ra, rb)
    new = {p: e for p, e in iter_files(read, rb)}
    result = {p: e for p, e in iter_files(read, ra)}
    for path in changes.removed:
        del result[path.encode("utf-8", "surrogateescape")]
    for path in (*changes.added, *changes.modified):
        key = path.encode("utf-8", "surrogateescape")
        result[key] = new[key]
    assert result == new
    assert list(changes.added) == sorted(changes.added)


def test_identical_subtrees_are_skipped_by_id() -> None:
    store: dict[str, bytes] = {}
    big = {f"static/{i}.csv".encode(): b"x" for i in range(50)}
    ra = build({**big, b"hot/a.csv": b"1"}, store)
    rb = build({**big, b"hot/a.csv": b"2"}, store)
    read_ids: list[str] = []
    base = reader(store)

    def spying(oid: str) -> Tree:
        read_ids.append(oid)
        return base(oid)

    assert diff_trees(spying, ra, rb) == ChangeSet(modified=("hot/a.csv",))
    static_id = build(big, {})  # not what we compare, but shows ids are by content
    assert len(read_ids) == 4  # two roots, two "hot" trees; "static" never read
    assert static_id not in read_ids


def test_renames_in_content_mode() -> None:
    store: dict[str, bytes] = {}
    ra = build({b"a/old.csv": b"\x01" * 32, b"b.csv": b"\x02" * 32}, store)
    rb = build({b"a/new.csv": b"\x01" * 32, b"b.csv": b"\x02" * 32}, store)
    assert diff_trees(reader(store), ra, rb) == ChangeSet(
        added=("a/new.csv",), removed=("a/old.csv",), renamed=(("a/old.csv", "a/new.csv"),)
    )


def test_file_replaced_by_folder() -> None:
    store: dict[str, bytes] = {}
    ra = build({b"x": b"1"}, store)
    rb = build({b"x/y": b"1"}, store)
    assert diff_trees(reader(store), ra, rb) == ChangeSet(
        added=("x/y",), removed=("x",), renamed=(("x", "x/y"),)
    )


def _tree(store: dict[str, bytes], *entries: TreeEntry) -> str:
    data = encode_object(Tree(entries=entries))
    store[object_id(data)] = data
    return object_id(data)


def test_renames_pair_only_entries_of_the_same_kind() -> None:
    from blake3 import blake3

    from manifest.model import KIND_SYMLINK

    store: dict[str, bytes] = {}
    digest = blake3(b"same text").digest()
    old = _tree(store, TreeEntry(b"a.txt", KIND_FILE, 9, 0, digest))
    link = _tree(store, TreeEntry(b"b.txt", KIND_SYMLINK, 9, 0, digest))
    changes = diff_trees(reader(store), old, link)
    assert changes.renamed == () and changes.added == ("b.txt",)
    moved = _tree(store, TreeEntry(b"c.txt", KIND_FILE, 9, 0, digest))
    assert diff_trees(reader(store), old, moved).renamed == (("a.txt", "c.txt"),)
    assert diff_trees(reader(store), old, moved, renames=False).renamed == ()


def test_mtime_mode_reports_no_renames(make_repo: MakeRepo, raw: Path) -> None:
    repo = make_repo(mode="mtime_size")
    repo.begin()
    os.symlink("x", raw / "l1")
    repo.snapshot(ref="last")
    os.rename(raw / "l1", raw / "l2")
    changes = repo.status().changes
    assert changes.added == ("l2",) and changes.removed == ("l1",) and changes.renamed == ()


def test_fingerprints_list_files_never_folders(tmp_path: Path) -> None:
    """Issue 22.8: an added or removed folder is its files in `--fingerprints`, never a
    `{"path": "a/sub", "change": "unchanged", "old": null, "new": null}` row."""
    from manifest import Repository, load_config

    root = tmp_path / "raw"
    (root / "gone" / "deep").mkdir(parents=True)
    (root / "gone" / "deep" / "x.csv").write_text("x\n")
    (root / "keep.csv").write_text("k\n")
    repo = Repository(load_config(root=root, store=tmp_path / "s", cooldown_sec=0, env={}))
    repo.snapshot(ref="last")
    import shutil

    shutil.rmtree(root / "gone")
    (root / "new" / "sub").mkdir(parents=True)
    (root / "new" / "sub" / "y.csv").write_text("y\n")
    details = repo.status(details=True).details
    assert [(d.path, d.change) for d in details] == [
        ("gone/deep/x.csv", "removed"),
        ("new/sub/y.csv", "added"),
    ]
    assert all(d.old is not None or d.new is not None for d in details)
