"""The watcher's journal (issue 24.1-2): a real `manifest watch` process on a real inotify,
asked by real scans. A scan that the journal answers must be the scan a walk would give;
any doubt (no watcher, killed, restarted, an overflowed queue, a folder moved in) is a walk,
and no change is ever lost."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from manifest import Repository, load_config
from manifest.root import watch as journal

from .conftest import write

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux's")


def _repo(
    root: Path, store: Path, mode: str = "content_hash", exclude: tuple[str, ...] = ()
) -> Repository:
    config = load_config(root=root, store=store, cooldown_sec=0, mode=mode, exclude=exclude, env={})
    return Repository(config, lock_timeout=5.0)


class Watcher:
    """`manifest watch` in the foreground, as a supervisor would run it."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        repo = self.repo
        argv = [sys.executable, "-m", "manifest", "--store", repo.store.text]
        argv += ["--root", repo.root.text, "watch"]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while self.status() is None:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "the watcher did not answer"
            time.sleep(0.05)

    def status(self) -> dict[str, object] | None:
        root = self.repo.root.local_path
        assert root is not None
        return journal.ask(root, self.repo.store.cache_dir, {"op": "status"})

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.proc.wait(10)


@pytest.fixture
def watched(tmp_path: Path, raw: Path) -> Iterator[tuple[Repository, Watcher]]:
    repo = _repo(raw, tmp_path / "state")
    repo.snapshot(ref="last", message="base")
    watcher = Watcher(repo)
    watcher.start()
    yield repo, watcher
    if watcher.proc is not None and watcher.proc.poll() is None:
        watcher.proc.kill()
        watcher.proc.wait(10)


def _no_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    import manifest.root.scan

    class Refused(manifest.root.scan.Scanner):
        def scan(self) -> object:  # type: ignore[override]
            raise AssertionError("the tree was walked")

    monkeypatch.setattr(manifest.root.scan, "Scanner", Refused)


def _listing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The folders every scan from here on lists, in order."""
    import manifest.root.scan

    listed: list[str] = []

    class Recording(manifest.root.scan.Scanner):
        def _list_dir(self, dir_fd: int, rel_dir: bytes) -> list[os.DirEntry[str]]:
            listed.append(os.fsdecode(rel_dir))
            return super()._list_dir(dir_fd, rel_dir)

    monkeypatch.setattr(manifest.root.scan, "Scanner", Recording)
    return listed


def test_a_quiet_scan_is_answered_by_the_journal_without_a_walk(
    watched: tuple[Repository, Watcher], raw: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, watcher = watched
    first = repo.status()
    assert (first.scan_source, first.changes) == ("scan", first.changes.__class__())
    assert "no clean scan recorded" in first.scan_reason
    shown = watcher.status()  # `watch --status` tells why a scan walked although it answered
    assert shown is not None and (shown["questions"], shown["walks"]) == (1, 1)
    assert "no clean scan recorded" in shown["last_walk"]["reason"]  # type: ignore[index]
    with monkeypatch.context() as m:
        _no_walk(m)
        quiet = repo.status()
        assert quiet.scan_source == "journal" and not quiet.changes
        assert (quiet.files, quiet.hashed) == (first.files, 0)
        assert repo.begin().outcome == "unchanged"  # the tick's question, no walk either
    (raw / "links" / "analogy.txt").write_text("{concept_a} is unlike {concept_b}\n")
    # asked at once: the watcher reads every event queued before the question; only the
    # changed file's folders are listed again, every other folder keeps its base tree
    with monkeypatch.context() as m:
        listed = _listing(m)
        edited = repo.status()
    assert edited.scan_source == "journal" and edited.changes.modified == ("links/analogy.txt",)
    assert sorted(listed) == ["", "links/"], listed
    assert "1 path(s) changed" in edited.scan_reason and "listed 2 folder(s)" in edited.scan_reason
    # (the listed folders' files were written just now: racy, so each is read again, as a
    # walk would; the others' are not looked at)
    listed_files = [p for d in (raw, raw / "links") for p in d.iterdir() if p.is_file()]
    assert edited.files == first.files
    assert 1 <= edited.hashed <= len(listed_files) < first.files
    # the edit is not the base snapshot's tree yet: asked again, the journal answers again
    # from the last clean scan's token, with the same path
    assert repo.status().changes == edited.changes
    pending = repo.begin()  # the tick's snapshot records it; promoted, it is the new base
    assert pending.outcome == "started" and pending.snapshot is not None
    repo.promote(pending.snapshot)
    with monkeypatch.context() as m:
        _no_walk(m)
        assert repo.status().scan_source == "journal"


def _files_of(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def test_a_rehearsal_asks_no_one_writes_nothing_and_is_never_an_answer(
    watched: tuple[Repository, Watcher], raw: Path, tmp_path: Path
) -> None:
    """``Repository.warm`` (what the command server's spare children run before their
    command): the status of a quiet tree from the recorded clean scan, built without asking
    the watcher or writing a byte; nothing without a recorded scan; and a status asked after
    it still asks the watcher, which says what changed."""
    repo, watcher = watched
    assert repo.warm() is None  # no clean scan recorded with a token yet
    repo.status()  # records one
    quiet = repo.status()
    assert quiet.scan_source == "journal"
    asked = watcher.status()
    before = _files_of(tmp_path / "state")
    rehearsed = repo.warm()
    assert rehearsed is not None
    assert (rehearsed.scan_source, rehearsed.changes, rehearsed.files, rehearsed.last) == (
        "journal",
        quiet.changes,
        quiet.files,
        quiet.last,
    )
    now = watcher.status()
    assert asked is not None and now is not None
    assert (now["questions"], now["walks"]) == (asked["questions"], asked["walks"])
    assert _files_of(tmp_path / "state") == before
    (raw / "links" / "analogy.txt").write_text("{concept_a} is unlike {concept_b}\n")
    again = repo.warm()  # a rehearsal knows nothing of the edit: it asked no one
    assert again is not None and not again.changes
    assert repo.status().changes.modified == ("links/analogy.txt",)


def test_a_file_the_filters_leave_out_does_not_cost_a_walk(
    tmp_path: Path, raw: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository(
        load_config(root=raw, store=tmp_path / "state", cooldown_sec=0, exclude=("*.tmp",), env={})
    )
    repo.snapshot(ref="last")
    watcher = Watcher(repo)
    watcher.start()
    recorded = repo.store.cache_dir / "journal"  # the last clean scan and its token
    try:
        repo.status()
        walked = json.loads(recorded.read_bytes())["token"]
        write(raw / "draft.tmp", "scratch")
        with monkeypatch.context() as m:
            _no_walk(m)
            assert repo.status().scan_source == "journal"
            # the answer moved the recorded token past the event (the next question asks
            # for less); asked again on a quiet tree, the token and the file stay as they are
            kept = recorded.stat()
            assert json.loads(recorded.read_bytes())["token"] != walked
            assert repo.status().scan_source == "journal"
            again = recorded.stat()
            assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    finally:
        watcher.kill()


def test_any_doubt_is_a_walk_and_no_change_is_lost(
    watched: tuple[Repository, Watcher], raw: Path, tmp_path: Path
) -> None:
    repo, watcher = watched
    repo.status()
    assert repo.status().scan_source == "journal"

    watcher.kill()  # SIGKILL: the journal is gone with it
    watcher.start()  # a new journal: the token recorded with the last scan means nothing
    restarted = repo.status()
    assert restarted.scan_source == "scan" and "started again" in restarted.scan_reason
    assert repo.status().scan_source == "journal"

    watcher.kill()
    write(raw / "while_dead.txt", "made while no watcher ran")
    dead = repo.status()
    assert (dead.scan_source, dead.scan_reason) == ("scan", "no watcher")
    assert dead.changes.added == ("while_dead.txt",)
    repo.snapshot(ref="last")
    watcher.start()
    assert "started again" in repo.status().scan_reason
    assert repo.status().scan_source == "journal"

    outside = tmp_path / "outside"
    write(outside / "deep" / "moved.csv", "a,b\n")
    os.rename(outside, raw / "moved_in")  # a folder moved in: its files made no events
    moved = repo.status()
    assert moved.scan_source == "scan" and "moved in" in moved.scan_reason
    assert moved.changes.added == ("moved_in/deep/moved.csv",)
    repo.snapshot(ref="last")
    repo.status()

    # the kernel's queue overflows while the watcher is stopped: the journal cannot vouch
    burst = raw / "burst"
    burst.mkdir()
    assert watcher.status() is not None  # the watcher has seen it and watches it
    watcher.kill(signal.SIGSTOP)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    for i in range(limit // 2 + 10):  # each file: CREATE, MODIFY, CLOSE_WRITE and more
        (burst / f"{i}.txt").write_text("x")
    for i in range(1, limit // 2 + 10):
        (burst / f"{i}.txt").unlink()
    watcher.kill(signal.SIGCONT)
    over = repo.status()
    assert over.scan_source == "scan"
    assert "overflow" in over.scan_reason
    assert over.changes.added == ("burst/0.txt",)  # what the burst left is found
    status = watcher.status()
    assert status is not None and int(status["overflows"]) >= 1  # type: ignore[call-overload]


def test_a_recorded_scan_that_does_not_add_up_to_the_base_snapshot_is_walked(
    watched: tuple[Repository, Watcher], raw: Path
) -> None:
    """The patched scan settles its counts against the base snapshot's trees; a recorded
    state that disagrees with them (damaged, or of another tree) is never trusted."""
    import json

    repo, _ = watched
    repo.status()
    state_file = repo.store.cache_dir / "journal"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "files": state["files"] + 1}))
    write(raw / "links" / "new.txt", "new\n")
    st = repo.status()
    assert st.scan_source == "scan" and "does not match" in st.scan_reason
    assert st.changes.added == ("links/new.txt",)


def test_a_root_moved_away_or_replaced_stops_the_watcher_and_scans_walk(
    watched: tuple[Repository, Watcher], raw: Path, tmp_path: Path
) -> None:
    repo, watcher = watched
    repo.status()
    assert repo.status().scan_source == "journal"
    os.rename(raw, tmp_path / "raw.old")  # replaced: the watched folder is now elsewhere
    shutil.copytree(tmp_path / "raw.old", raw, symlinks=True)
    write(raw / "in_the_new_root.txt", "new\n")
    after = repo.status()
    assert after.scan_source == "scan"  # never the old folder's journal
    assert after.changes.added == ("in_the_new_root.txt",)
    assert watcher.proc is not None and watcher.proc.wait(10) == 3
    assert watcher.proc.stderr is not None
    assert b"the root was moved or deleted" in watcher.proc.stderr.read()


def test_watch_cli_starts_reports_and_stops_a_background_watcher(tmp_path: Path, raw: Path) -> None:
    store = tmp_path / "state"
    repo = _repo(raw, store)
    repo.snapshot(ref="last")
    # run from a folder that holds another `manifest` package: the watcher the program
    # starts in the background must still be this one (`python -P`)
    decoy = tmp_path / "checkout"
    (decoy / "manifest").mkdir(parents=True)
    (decoy / "manifest" / "__init__.py").write_text("")
    (decoy / "manifest" / "__main__.py").write_text("raise SystemExit('not manifest')\n")
    manifest = [sys.executable, "-P", "-m", "manifest", "--store", str(store)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*manifest, *args], capture_output=True, text=True, timeout=60, cwd=decoy
        )

    assert "no watcher runs" in run("watch", "--status").stdout
    started = run("watch", "--start")
    assert started.returncode == 0 and "in the background" in started.stdout
    again = run("watch", "--start")
    assert again.returncode == 3 and "already runs" in again.stderr
    shown = run("watch", "--status")
    assert "folders" in shown.stdout and "token" in shown.stdout
    assert "walked the tree: no clean scan recorded" in run("status").stdout
    assert "(no walk: the watcher's journal shows no change" in run("status").stdout
    write(raw / "links" / "analogy.txt", "{concept_a} is unlike {concept_b}\n")
    edited = run("status").stdout
    assert "(no full walk: the watcher's journal shows 1 path(s) changed" in edited, edited
    assert "modified: links/analogy.txt" in edited
    assert run("watch", "--stop").returncode == 0
    deadline = time.monotonic() + 10
    while "no watcher runs" not in run("watch", "--status").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("mode", "exclude"),
    [
        ("content_hash", ()),
        ("mtime_size", ()),
        ("content_hash", ("**/*.tmp", "d2/s1/**")),  # files and a whole folder left out
    ],
)
def test_the_journal_gives_exactly_the_snapshots_a_walk_gives(
    tmp_path: Path, mode: str, exclude: tuple[str, ...], fine_timestamps: None
) -> None:
    """An oracle: random file operations; after each, the watched store and a store that
    always walks record the same tree, and the watched one walks only when in doubt."""
    root = tmp_path / "raw"
    for i in range(18):
        write(root / f"d{i % 3}" / f"s{i % 2}" / f"f{i}.txt", f"{i}\n")
    watched = _repo(root, tmp_path / "watched", mode, exclude)
    walked = _repo(root, tmp_path / "walked", mode, exclude)
    watched.snapshot(ref="last")
    walked.snapshot(ref="last")
    watcher = Watcher(watched)
    watcher.start()
    rng = random.Random(24)
    journal_answers = patched = 0
    try:
        for step in range(40):
            files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
            dirs = sorted(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())
            op = rng.choice(
                [
                    *("create", "edit", "edit_keep_mtime", "rename", "rename_dir", "move_in"),
                    *("delete_tree", "symlink_swap", "fifo", "empty_dir", "nothing"),
                    "nothing",
                ]
            )
            if op == "create":
                where = rng.choice(["", "d0/", "d1/new/", "d2/s1/", "d0/s0/deeper/"])
                write(root / where / f"c{step}.{rng.choice(['txt', 'txt', 'tmp'])}", str(step))
            elif op == "edit" and files:
                write(rng.choice(files), f"edited {step}\n")
            elif op == "edit_keep_mtime" and files:
                path = rng.choice(files)
                st = path.stat()
                path.write_bytes(path.read_bytes()[::-1] or b"z")
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            elif op == "rename" and files:
                path = rng.choice(files)
                path.rename(path.with_name(f"r{step}.txt"))
            elif op == "rename_dir" and dirs:
                path = rng.choice(dirs)
                path.rename(path.with_name(f"rd{step}"))
            elif op == "move_in":
                outside = tmp_path / f"outside{step}"
                write(outside / "x" / "in.txt", f"in {step}\n")
                os.rename(outside, root / f"in{step}")
            elif op == "delete_tree" and dirs:
                shutil.rmtree(rng.choice(dirs))
            elif op == "symlink_swap" and files:
                path = rng.choice(files)
                path.unlink()
                path.symlink_to("elsewhere")
            elif op == "fifo" and dirs:
                os.mkfifo(rng.choice(dirs) / f"p{step}")  # skipped, and named so
            elif op == "empty_dir":
                (root / rng.choice(["", "d1/"]) / f"e{step}").mkdir(exist_ok=True)
            a = watched.status()
            b = walked.status()
            assert a.changes == b.changes, (step, op, a.scan_reason)
            assert (a.files, a.skipped) == (b.files, b.skipped), (step, op, a.scan_reason)
            patched += a.scan_source == "journal" and bool(a.changes)
            sa, _ = watched.snapshot(ref="last")
            sb, _ = walked.snapshot(ref="last")
            snap_a, snap_b = watched.read_snapshot(sa), walked.read_snapshot(sb)
            assert (snap_a.root, snap_a.counts) == (snap_b.root, snap_b.counts), (step, op)
            again = watched.status()
            assert not again.changes and again.scan_source in ("journal", "scan")
            journal_answers += again.scan_source == "journal"
    finally:
        watcher.kill()
    assert journal_answers >= 20  # the journal answered the quiet questions
    assert patched >= 10  # and listed only the changed folders after most changes


def test_the_journal_keeps_each_path_once_and_answers_from_a_token() -> None:
    j = journal.Journal()
    start = j.token
    for _ in range(3):
        j.note("a.csv")  # one file, many events: one entry
    j.note("b/c.txt")
    assert len(j.paths) == 2
    middle = j.token
    j.note("a.csv")
    assert j.since(start) == {"token": j.token, "full": False, "paths": ["a.csv", "b/c.txt"]}
    assert j.since(middle)["paths"] == ["a.csv"]
    assert j.since(j.token)["paths"] == []
    j.restart("the kernel's event queue overflowed")
    answer = j.since(middle)
    assert answer["full"] and "overflowed" in answer["reason"]
    assert j.since(None)["reason"] == "no token recorded"
    j.note("x.csv")
    j.note("y/z.csv")
    limited = j.since(f"{j.id}:0", limit=1)  # more paths than the scan wants: walk
    assert limited["full"] and "more than 1 paths" in limited["reason"]
    assert j.since(f"{j.id}:0", limit=2)["paths"] == ["x.csv", "y/z.csv"]
