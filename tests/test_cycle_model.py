"""The whole cycle against a model (Hypothesis state machine): edits, begin, promote,
abandon, hand resets, gc with expiry and injected write failures. Invariants: no requested
change is ever lost, no ref or reflog line names a missing object, and `last` moves only
by promotion or by hand."""

from __future__ import annotations

import errno
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import manifest.store.refs
from manifest import ChangeSet, Repository, load_config
from manifest.errors import ManifestError

from .conftest import write

PATHS = ["a.csv", "b.csv", "sub/c.csv", "sub/deep/d.csv"]


class Cycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="cycle-"))
        self.root = self.dir / "raw"
        self.root.mkdir()
        self.working: dict[str, str] = {}
        # sync=False: no fsync (durability is test_crash.py's); every write path is the same
        # (a few files: never the bulk tree write)
        self.repo = Repository(
            load_config(root=self.root, store=self.dir / "state", cooldown_sec=0, env={}),
            lock_timeout=1.0,
            sync=False,
        )
        write(self.root / "a.csv", "seed")
        self.working["a.csv"] = "seed"
        assert self.repo.begin().outcome == "baseline"
        self.last = self.repo.find_ref("last")
        self.last_content = dict(self.working)
        self.pending: str | None = None
        self.pending_paths: set[str] = set()
        self.owed: set[str] = set()  # requested by a superseded pending, not yet processed

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the world changes -----------------------------------------------------------------

    @rule(path=st.sampled_from(PATHS), text=st.sampled_from(["x", "y", "zz"]))
    def edit(self, path: str, text: str) -> None:
        write(self.root / path, text)
        self.working[path] = text

    @rule(path=st.sampled_from(PATHS))
    def remove(self, path: str) -> None:
        if path in self.working:
            (self.root / path).unlink()
            del self.working[path]

    # -- the cycle -------------------------------------------------------------------------

    def _differs(self) -> set[str]:
        keys = self.working.keys() | self.last_content.keys()
        return {p for p in keys if self.working.get(p) != self.last_content.get(p)}

    @precondition(lambda self: self.pending is None)
    @rule()
    def begin(self) -> None:
        result = self.repo.begin()
        expected = self._differs() | self.owed
        if not expected:
            assert result.outcome == "unchanged"
            return
        assert result.outcome == "started" and result.snapshot is not None
        assert set(result.changes.paths) == expected  # nothing lost, nothing invented
        self.pending = result.snapshot
        self.pending_paths = expected
        self.pending_content = dict(self.working)
        self.owed = set()

    @precondition(lambda self: self.pending is None)
    @rule(path=st.sampled_from(PATHS), text=st.sampled_from(["x", "y", "zz"]))
    def begin_while_another_cycle_runs(self, path: str, text: str) -> None:
        """Two interleaved cycles (issue 22.10): between this begin's scan and its move of
        pending, another process begins, is abandoned, and a file changes. Nothing the
        other cycle requested is lost: this pending carries it."""
        other = Repository(
            load_config(root=self.root, store=self.dir / "state", cooldown_sec=0, env={}),
            lock_timeout=1.0,
            sync=False,
        )
        scanned = self._differs() | self.owed  # what this begin's scan sees and owes
        content = dict(self.working)
        real = Repository._write_snapshot
        seen: list[bool] = []

        def interleave(repo: Repository, *args: object, **kwargs: object) -> object:
            if repo is self.repo and not seen:
                seen.append(True)
                started = other.begin()
                if started.outcome == "started" and started.snapshot is not None:
                    other.abandon(started.snapshot)
                write(self.root / path, text)
                self.working[path] = text
            return real(repo, *args, **kwargs)  # type: ignore[arg-type]

        Repository._write_snapshot = interleave  # type: ignore[assignment,method-assign]
        try:
            result = self.repo.begin()
        finally:
            Repository._write_snapshot = real  # type: ignore[method-assign]
        if not scanned:
            assert result.outcome == "unchanged"
            return
        assert result.outcome == "started" and result.snapshot is not None
        assert set(result.changes.paths) == scanned  # the other cycle's request included
        assert self.repo.find_ref("unfinished") is None  # taken over in the same step
        self.pending = result.snapshot
        self.pending_paths = scanned
        self.pending_content = content
        self.owed = set()

    @precondition(lambda self: self.pending is not None)
    @rule()
    def promote(self) -> None:
        assert self.pending is not None
        assert self.repo.promote(self.pending, runs=("r",)).outcome == "promoted"
        self.last = self.pending
        self.last_content = self.pending_content
        self.pending = None

    @precondition(lambda self: self.pending is not None)
    @rule()
    def abandon(self) -> None:
        assert self.pending is not None
        assert self.repo.abandon(self.pending).outcome == "abandoned"
        self.owed |= self.pending_paths  # must come back in the next request
        self.pending = None

    @precondition(lambda self: self.pending is None and len(self.repo.log("last")) > 1)
    @rule()
    def reset_last_back(self) -> None:
        target = self.repo.resolve("last@{1}")
        self.repo.reset("last", "last@{1}", message="by hand")
        self.last = target
        self.last_content = {
            p: _content(self.repo, target, p) for p, _ in self.repo.iter_files(target)
        }

    @rule(expire=st.sampled_from([None, 0.0, 3600.0]))
    def gc(self, expire: float | None) -> None:
        self.repo.gc(grace_seconds=0, expire_seconds=expire)

    @precondition(lambda self: self.pending is not None)
    @rule(where=st.sampled_from(["reflog", "ref"]))
    def promote_fails(self, where: str) -> None:
        """A write fails mid-promotion (disk full, I/O error): nothing moves half-way."""
        assert self.pending is not None
        real_append, real_write = (
            manifest.store.refs.RefStore._append_reflog,
            manifest.store.refs.atomic_write,
        )

        def fail(*args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        if where == "reflog":
            manifest.store.refs.RefStore._append_reflog = fail  # type: ignore[method-assign]
        else:
            manifest.store.refs.atomic_write = fail  # type: ignore[assignment]
        try:
            self.repo.promote(self.pending)
            raise AssertionError("the promotion should have failed")
        except ManifestError:
            pass
        finally:
            manifest.store.refs.RefStore._append_reflog = real_append  # type: ignore[method-assign]
            manifest.store.refs.atomic_write = real_write
        assert self.repo.find_ref("last") == self.last
        assert self.repo.find_ref("pending") == self.pending

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def last_moves_only_by_promotion_or_by_hand(self) -> None:
        assert self.repo.find_ref("last") == self.last
        assert self.repo.find_ref("pending") == self.pending

    @invariant()
    def refs_and_reflogs_name_stored_objects(self) -> None:
        report = self.repo.fsck()
        assert report.ok, report.problems
        if self.last is not None:
            assert self.repo.diff_snapshots(self.last, self.last) == ChangeSet()


def _content(repo: Repository, snapshot: str, path: str) -> str:
    """What ``path`` held in ``snapshot``: the model only needs equality, so the digest
    stands in for the text and is mapped back through the working texts seen."""
    entry = repo.find_file(snapshot, path)
    assert entry is not None
    from blake3 import blake3

    for text in ("seed", "x", "y", "zz"):
        if blake3(text.encode()).digest() == entry.digest:
            return text
    raise AssertionError(f"unknown content for {path}")


Cycle.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestCycle = Cycle.TestCase
