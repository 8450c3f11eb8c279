"""One conformance suite for data roots (issue 23.4): what ``docs/operations.md`` promises of
a scan, asserted once and run against each kind of root ``open_root`` chooses: a local folder
and a bucket prefix on a real S3 API (moto's server on 127.0.0.1). A new kind joins by adding
a parameter to ``tree`` with its own way to put and delete files."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from manifest import ChangeSet, Repository, load_config
from manifest.errors import RootError
from manifest.location import BucketURL
from manifest.root import Root, open_root
from manifest.scanresult import BaseTrees

from ..conftest import write

FILES = {
    "concepts/concepts_metadata.csv": b"concept_id,name\nc1,tide\n",
    "concepts/descriptions/c1.txt": b"The tide.\n",
    "link_templates.csv": b"template_id,template_file\n",
    "links/analogy.txt": b"{a} is like {b}\n",
}


@dataclass
class Tree:
    """A data root under test and how to change it behind the scanner's back."""

    kind: str
    location: str
    put: Callable[[str, bytes], None]  # a file written now (still settling)
    delete: Callable[[str], None]
    settle: Callable[[], None]  # wait until what was put is older than a zero cooldown
    state: Path
    repos: list[Repository] = field(default_factory=list)

    def repo(self, **overrides: object) -> Repository:
        kwargs: dict[str, object] = {
            "root": self.location,
            "store": self.state,
            "cooldown_sec": 0,
            "mode": "content_hash",
            "env": {},
        }
        kwargs.update(overrides)
        return Repository(load_config(**kwargs), lock_timeout=2.0)  # type: ignore[arg-type]

    def fill(self, files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            self.put(rel, data)
        self.settle()


@pytest.fixture(params=["local", "bucket"])
def tree(request: pytest.FixtureRequest, tmp_path: Path) -> Tree:
    if request.param == "local":
        request.getfixturevalue("fine_timestamps")  # exact timestamps: no racy window
        folder = tmp_path / "raw"
        folder.mkdir()
        written: list[Path] = []

        def put_local(rel: str, data: bytes) -> None:
            written.append(write(folder / rel, data, age=0))

        def settle_local() -> None:
            # a written file is dated now: age those written past a zero cooldown
            stamp = time.time_ns() - 60_000_000_000
            for path in written:
                os.utime(path, ns=(stamp, stamp))
            written.clear()

        tree = Tree(
            "local",
            str(folder),
            put_local,
            lambda rel: (folder / rel).unlink(),
            settle_local,
            tmp_path / "state",
        )
    else:
        from manifest.store.s3 import Bucket

        s3 = request.getfixturevalue("s3")
        url = BucketURL("s3", s3.make_bucket("root"), "data/1_raw")
        bucket = Bucket(url)
        tree = Tree(
            "bucket",
            str(url),
            bucket.put,
            bucket.delete,
            lambda: time.sleep(1.05),  # LastModified has whole seconds: wait the second out
            tmp_path / "state",
        )
    tree.fill(FILES)
    return tree


def _scan(root: Root, base: str | None, repo: Repository) -> tuple[str, int, int]:
    snap = repo.read_snapshot(base) if base else None
    result = root.scan(BaseTrees(repo.objects, snap.root if snap else None))
    return result.root_id, result.files, result.hashed


# -- scanning ------------------------------------------------------------------------------


def test_a_scan_records_every_file_and_an_unchanged_tree_keeps_its_id(tree: Tree) -> None:
    repo = tree.repo()
    snap, changes = repo.snapshot(ref="last")
    assert changes == ChangeSet(added=tuple(sorted(FILES)))
    assert repo.read_snapshot(snap).counts.files == len(FILES)
    assert repo.read_snapshot(snap).counts.bytes == sum(len(d) for d in FILES.values())
    assert sorted(p for p, _ in repo.iter_files(snap)) == sorted(FILES)
    again, files, hashed = _scan(repo.root, snap, repo)
    assert (again, files) == (repo.read_snapshot(snap).root, len(FILES))
    assert hashed == 0  # nothing changed: nothing is read again (stat or hash cache)


def test_an_edit_an_addition_and_a_removal_are_each_seen(tree: Tree) -> None:
    repo = tree.repo()
    repo.snapshot(ref="last")
    tree.put("links/analogy.txt", b"{a} is unlike {b}\n")
    tree.put("links/new.txt", b"new\n")
    tree.delete("link_templates.csv")
    tree.settle()
    status = repo.status()
    assert status.changes == ChangeSet(
        added=("links/new.txt",), modified=("links/analogy.txt",), removed=("link_templates.csv",)
    )
    assert status.hashed == 2  # only the two files written were read


def test_a_file_still_settling_waits_and_keeps_its_last_entry(tree: Tree) -> None:
    repo = tree.repo()
    repo.snapshot(ref="last")
    patient = tree.repo(cooldown_sec=3600)
    tree.put("links/analogy.txt", b"half written")
    tree.put("links/fresh.txt", b"just now")
    status = patient.status()
    # (on a bucket, the files put by the fixture seconds ago are still settling too)
    assert {"links/analogy.txt", "links/fresh.txt"} <= set(status.unstable)
    assert status.changes == ChangeSet()  # neither is reported until it settles
    tree.settle()
    assert repo.status().changes == ChangeSet(
        added=("links/fresh.txt",), modified=("links/analogy.txt",)
    )


def test_filters_choose_the_files_recorded(tree: Tree) -> None:
    repo = tree.repo(include=("**/*.txt", "*.csv"), exclude=("links/**",))
    snap, _ = repo.snapshot(ref="last")
    assert sorted(p for p, _ in repo.iter_files(snap)) == [
        "concepts/descriptions/c1.txt",
        "link_templates.csv",
    ]


def test_a_store_inside_the_root_is_not_scanned(tree: Tree) -> None:
    inside = f"{tree.location}/.manifest"
    repo = tree.repo(store=inside)
    assert repo.begin().outcome == "baseline"  # wrote objects and refs below the root
    status = repo.status()
    assert (status.files, status.changes) == (len(FILES), ChangeSet())


# -- reading, listing, describing ----------------------------------------------------------


def test_files_are_read_and_listed_without_a_store(tree: Tree) -> None:
    root = tree.repo().root
    bare = open_root(root.location)  # the Dagster resource's way: no settings, no store
    for reader in (root, bare):
        assert reader.read_bytes("links/analogy.txt") == FILES["links/analogy.txt"]
        assert reader.list_files() == sorted(FILES)
        assert reader.list_files("concepts") == [
            "concepts/concepts_metadata.csv",
            "concepts/descriptions/c1.txt",
        ]
        with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
            reader.read_bytes("links/missing.txt")
    with pytest.raises(TypeError, match="read files only"):
        bare.scan(BaseTrees(None, None))
    assert bare.location_of("a/b.csv") == f"{root.text}/a/b.csv"


def test_a_root_describes_itself_and_a_missing_one_is_named(tree: Tree) -> None:
    root = tree.repo().root
    assert root.text == tree.location and root.describe() == tree.location
    assert (root.local_path is not None) == (tree.kind == "local")
    root.check()
    missing = tree.repo(root=f"{tree.location}-gone", store=tree.state.parent / "other").root
    if tree.kind == "bucket":
        missing = open_root(BucketURL("s3", "no-such-root-bucket", "x"))
    with pytest.raises(RootError, match=re.escape(missing.text)):
        missing.check()
