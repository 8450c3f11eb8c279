"""The compiled client (`manifest build-client`, manifest/native_client.c): built here with
the machine's C compiler, run against real watchers. Whatever it serves prints exactly what
the Python program prints, with its exit code; whatever it cannot serve it hands to the
Python program before writing a byte."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from manifest import native

from .conftest import on_tty, write
from .test_server import PROGRAM, Project, _same, ctrl_c_reaches_the_command, served_lines

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux's"),
    pytest.mark.skipif(native.compiler() is None, reason="no C compiler on this machine"),
]


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The client, built once for this interpreter and this checkout."""
    out = tmp_path_factory.mktemp("native") / native.NAME
    done = subprocess.run(
        [*PROGRAM, "build-client", str(out)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert f"built {out}" in done.stdout
    return [str(out)]


def test_it_answers_exactly_what_the_program_answers(project: Project, fast: list[str]) -> None:
    served = [*served_lines(project), (["--store=.manifest", "status", "--limit=2"], None)]
    handed: list[tuple[list[str], Path | None]] = [
        (["log"], None),  # another command
        (["--help"], None),
        (["status", "--bogus"], None),  # Typer's error, exit 2
        (["status", "--limit", "0"], None),  # the server's parse refuses it: "fallback"
        (["status", "--json", "--json"], None),  # given twice: Typer's rule
        (["--store", "s3://bucket/x", "status"], None),  # not a folder
    ]
    before = project.served()
    for argv, cwd in served + handed:
        fast_result = project.run(*argv, cwd=cwd, program=fast)
        alone = project.run(*argv, cwd=cwd, server=False)
        assert _same(fast_result) == _same(alone), argv
        assert "Traceback" not in fast_result.stderr
    assert project.served() == before + len(served)  # only the plain lines were answered
    assert project.run("status", "--exit-code", program=fast).returncode == 1
    assert project.run("--mode", "sideways", "status", program=fast).returncode == 3


def test_without_a_watcher_or_a_server_it_runs_the_program(
    project: Project, fast: list[str]
) -> None:
    write(project.raw / "link_templates.csv", "changed\n")
    before = project.served()
    off = project.run("status", "--exit-code", program=fast, MANIFEST_SERVER="0")
    assert _same(off) == _same(project.run("status", "--exit-code", server=False))
    assert project.served() == before
    project.stop()
    alone = project.run("status", "--exit-code", program=fast)
    assert _same(alone) == _same(project.run("status", "--exit-code"))
    assert alone.returncode == 1 and "modified: link_templates.csv" in alone.stdout
    assert "journal" not in alone.stdout  # a walk: no watcher


def test_other_code_than_the_watcher_runs_is_left_to_the_program(
    project: Project, tmp_path: Path
) -> None:
    """A client built for another interpreter (as after a reinstall; here the same one
    under another name, in its own folder, so that it finds its environment): its identity
    is not the watcher's, which answers "fallback"; the program runs, the same output."""
    other = Path(sys.executable).with_name(f"python-other-{os.getpid()}")
    other.symlink_to(Path(sys.executable).name)
    try:
        out = tmp_path / "other-fast"
        native.build(out, python=str(other))
        before = project.watcher()["commands"]
        result = project.run("status", "--json", program=[str(out)])
        after = project.watcher()["commands"]
    finally:
        other.unlink()
    assert _same(result) == _same(project.run("status", "--json", server=False))
    # the client was told "fallback"; the program it ran (the same Python, the same code
    # as the watcher's) was then answered by the watcher
    assert (after["served"], after["fallbacks"]) == (before["served"] + 1, before["fallbacks"] + 1)
    assert "code or Python changed" in after["last_fallback"]["reason"]


def test_a_page_is_paged_on_its_terminal(project: Project, fast: list[str]) -> None:
    write(project.raw / "link_templates.csv", "changed\n")
    env = {**project.env, "TERM": "xterm", "MANIFEST_PAGER": "sed 's/^/PAGED: /'"}

    def paged(program: list[str], **extra: str) -> str:
        code, text = on_tty([*program, "status"], {**env, **extra}, cwd=project.folder)
        assert code == 0
        return re.sub(r"\(\d+ \w+ ago\)", "(ago)", text)

    before = project.served()
    shown = paged(fast)
    assert project.served() == before + 1
    assert "PAGED: " in shown and "\x1b[33m" in shown  # paged, in colour (a terminal)
    assert shown == paged(PROGRAM, MANIFEST_SERVER="0")


def test_ctrl_c_reaches_the_command_and_it_waits_for_its_end(
    project: Project, fast: list[str]
) -> None:
    """As the program does (test_server.py): Ctrl-C goes on to the command, stopped here
    (SIGSTOP), and the client ends after it, with 130."""
    ctrl_c_reaches_the_command(project, fast)


def test_a_build_without_a_compiler_says_what_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc")}
    done = subprocess.run(
        [*PROGRAM, "build-client", str(tmp_path / "x")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert "no C compiler found" in done.stderr and "set CC" in done.stderr
    assert not (tmp_path / "x").exists()
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: out of disk' >&2\nexit 1\n")
    broken.chmod(0o755)
    done = subprocess.run(
        [*PROGRAM, "build-client", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env={**env, "CC": str(broken)},
    )
    assert done.returncode == 3 and "cc: out of disk" in done.stderr
    assert list(tmp_path.glob(".x*")) == []  # no temporary file left


def test_paths_reach_the_compiler_as_c_strings() -> None:
    assert native.c_string('/a "b"\\c?') == '"/a \\"b\\"\\\\c\\?"'
    assert native.c_string("/caf\udce9") == '"/caf\\351"'


def test_the_program_it_runs_is_the_installed_one_not_the_folders(
    fast: list[str], tmp_path: Path
) -> None:
    """`python -m` would put the current folder first on the module path: a folder holding a
    manifest/ package (a checkout of something else) must not run in its place (-P)."""
    (tmp_path / "manifest").mkdir()
    (tmp_path / "manifest" / "__init__.py").write_text("")
    (tmp_path / "manifest" / "__main__.py").write_text("print('NOT MANIFEST')\n")
    (tmp_path / "manifest.py").write_text("print('NOT MANIFEST EITHER')\n")
    for argv in (["--version"], ["log"], ["status"]):
        got = subprocess.run([*fast, *argv], capture_output=True, text=True, cwd=tmp_path)
        assert "NOT MANIFEST" not in got.stdout + got.stderr, argv
        alone = subprocess.run(
            [*PROGRAM, *argv], capture_output=True, text=True, cwd=tmp_path.parent
        )
        assert got.returncode == alone.returncode, argv


class Peer:
    """Whatever listens at the command socket of ``folder``: a process that bound the
    name first (anyone may), or a watcher that stops mid-conversation. Real sockets; the
    peer's part is scripted: ``"never accepts"`` (its queue full), ``"silent"`` (takes the
    request, never answers), ``"pid then hangs up"``, ``"go then hangs up"`` (once
    ``release`` is set)."""

    def __init__(self, folder: Path, script: str, command_pid: int) -> None:
        import socket
        import threading

        from manifest import client

        st = folder.stat()
        self.script = script
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(client.address(st.st_dev, st.st_ino))
        self.listener.listen(0)
        self.held: list[socket.socket] = []
        self.got = b""
        self.release = threading.Event()
        if script == "never accepts":  # fill the queue: connects now fail at once
            for _ in range(2):
                filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):  # (queued, never accepted)
                    filler.connect(self.listener.getsockname())
                self.held.append(filler)
            return
        self.pid = command_pid
        self.thread = threading.Thread(target=self._talk, daemon=True)
        self.thread.start()

    def _talk(self) -> None:
        conn, _ = self.listener.accept()
        self.held.append(conn)
        while b"\0" not in self.got or len(self.got) < 100:  # (enough of the request)
            chunk = conn.recv(65536)
            if not chunk:
                return
            self.got += chunk
        if self.script == "silent":
            return
        conn.sendall(b"pid %d\n" % self.pid)
        if self.script == "go then hangs up":
            self.got += conn.recv(3)
            self.release.wait(20)
        conn.close()

    def close(self) -> None:
        for s in self.held:
            s.close()
        self.listener.close()


@pytest.mark.parametrize(
    ("script", "expect"),
    [
        ("never accepts", "the program"),  # no hang: connecting fails at once
        ("pid then hangs up", "the program"),  # "go" never reached it: nothing ran there
        ("silent", "130"),  # Ctrl-C while waiting for the first reply
        ("go then hangs up", "130"),  # Ctrl-C after "go", then the end
    ],
)
def test_a_peer_that_does_not_answer_never_hangs_it_or_answers_twice(
    fast: list[str], tmp_path: Path, script: str, expect: str
) -> None:
    store = tmp_path / "state"
    store.mkdir()
    command = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    peer = Peer(store, script, command.pid)
    try:
        proc = subprocess.Popen(
            [*fast, "--store", str(store), "status"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        if expect == "130":
            deadline = time.monotonic() + 10
            while not (b"go" in peer.got if script == "go then hangs up" else peer.got):
                assert time.monotonic() < deadline, "the client sent nothing"
                time.sleep(0.02)
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            if script == "go then hangs up":  # the Ctrl-C went on to the command
                assert command.wait(10) == -signal.SIGINT
            peer.release.set()
        proc.wait(20)
    finally:
        peer.close()  # (a request it holds unread holds the client's descriptors too)
        command.kill()
        command.wait(10)
    out, err = proc.communicate(timeout=10)
    if expect == "the program":
        alone = subprocess.run(
            [*PROGRAM, "--store", str(store), "status"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "MANIFEST_SERVER": "0"},
        )
        assert (proc.returncode, out, err) == (alone.returncode, alone.stdout, alone.stderr)
    else:
        assert (proc.returncode, out, err) == (130, "", "")


def test_a_server_switched_off_with_spaces_is_off(project: Project, fast: list[str]) -> None:
    before = project.served()
    result = project.run("status", program=fast, MANIFEST_SERVER=" Off ")
    assert result.returncode == 0 and project.served() == before
