"""The command server (manifest.server, manifest.client): a plain `manifest status` answered
by the running watcher. Real watchers, real programs, real terminals and pipes: what the
program prints and its exit code are the same with the server as without it, and whatever
the server cannot serve it leaves to the program before it writes a byte."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from manifest import Repository, client, load_config
from manifest.errors import AmbiguousStoreError
from manifest.root import watch as journal

from .conftest import on_tty, write

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux's")

PROGRAM = [sys.executable, "-m", "manifest"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAW_", "DAGSTER_", "MANIFEST_")) and k not in ("PAGER", "NO_COLOR")
    }
    return {**env, "RAW_SCAN_COOLDOWN_SEC": "0", **extra}


class Project:
    """A project folder (``.manifest`` found walking up) with a watcher in the foreground, as
    a supervisor runs it (set up and asked in process: the programs under test are the
    status commands)."""

    def __init__(self, folder: Path, raw: Path, *, closed_std: bool = False) -> None:
        self.folder = folder
        self.raw = raw
        self.env = _clean_env()
        store = folder / ".manifest"
        repo = Repository(load_config(root=raw, store=store, cooldown_sec=0, env={}))
        repo.init()
        repo.snapshot(ref="last", message="base")
        self.root, self.cache = repo.root.local_path, repo.store.cache_dir
        assert self.root is not None
        argv = [*PROGRAM, "--store", str(store), "watch"]
        if closed_std:  # a watcher started with descriptors 0-2 closed (the client's land there)
            self.proc = subprocess.Popen(
                argv, env=self.env, preexec_fn=lambda: [os.close(fd) for fd in (0, 1, 2)]
            )
        else:
            self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, env=self.env)
        deadline = time.monotonic() + 30
        while journal.ask(self.root, self.cache, {"op": "status"}) is None:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "the watcher did not answer"
            time.sleep(0.02)
        self.run("status")  # walks once and records the journal's token

    def run(
        self,
        *args: str,
        server: bool = True,
        cwd: Path | None = None,
        program: list[str] = PROGRAM,
        **extra: str,
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **extra}
        if not server:
            env["MANIFEST_SERVER"] = "0"
        return subprocess.run(
            [*program, *args],
            capture_output=True,
            text=True,
            cwd=cwd or self.folder,
            env=env,
            timeout=60,
        )

    def watcher(self) -> dict[str, Any]:
        """What ``manifest watch --status --json`` shows (the watcher's own answer)."""
        assert self.root is not None
        answer = journal.ask(self.root, self.cache, {"op": "status"})
        return {"running": False} if answer is None else {"running": True, **answer}

    def served(self) -> int:
        return int(self.watcher()["commands"]["served"])

    def stop(self) -> None:
        shown = self.watcher()
        if shown["running"]:
            pids = [shown["pid"], *_children(shown["pid"])]
            assert self.root is not None
            journal.ask(self.root, self.cache, {"op": "stop"})
            assert _gone(pids), "the watcher or its spare child outlived its stop"
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _children(pid: int) -> list[int]:
    """The children of process ``pid``, whichever of its threads forked them."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # a thread that has just ended
            found += [int(c) for c in (task / "children").read_text().split()]
    return sorted(set(found))


def _one_spare(pid: int) -> list[int]:
    """The watcher's spare child, once there is one (it is forked after an answer: the
    program that asked may have gone before)."""
    deadline = time.monotonic() + 10
    while len(spares := _children(pid)) != 1:
        assert time.monotonic() < deadline, spares
        time.sleep(0.02)
    return spares


def _gone(pids: list[int], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            except OSError:
                continue
            if state not in ("Z", "X"):
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.02)
    return False


def _same(result: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    def ago(text: str) -> str:
        return re.sub(r"\(\d+ \w+ ago\)", "(ago)", text)

    return result.returncode, ago(result.stdout), ago(result.stderr)


def served_lines(project: Project) -> list[tuple[list[str], Path | None]]:
    """An edit and a removal in ``project``, and plain status lines (with the folder each
    runs in) that the watcher answers: errors included."""
    raw = project.raw
    write(raw / "concepts" / "descriptions" / "c3.txt", "A third.\n")
    (raw / "links" / "analogy.txt").unlink()
    sub = raw / "concepts"
    return [
        (["status"], None),
        (["status", "--json"], None),
        (["status", "--json", "--fingerprints"], None),
        (["status", "--exit-code", "--limit", "1"], None),
        (["--no-pager", "status"], sub),  # the store found walking up from a folder below
        (["-C", str(project.folder), "status", "--json"], Path("/")),
        (["--store", ".manifest", "status"], None),
        (["--mode", "sideways", "status"], None),  # a bad setting: the error, exit 3
        (["--root", str(sub), "status"], None),  # not the store's root: the error, exit 3
    ]


def test_the_server_answers_exactly_what_the_program_answers(project: Project) -> None:
    lines = served_lines(project)
    before = project.served()
    for argv, cwd in lines:
        served = project.run(*argv, cwd=cwd)
        alone = project.run(*argv, cwd=cwd, server=False)
        assert _same(served) == _same(alone), argv
        assert "Traceback" not in served.stderr
    assert project.served() == before + len(lines)  # every line was the watcher's to answer
    status = json.loads(project.run("status", "--json").stdout)
    assert status["added"] == ["concepts/descriptions/c3.txt"]
    assert status["removed"] == ["links/analogy.txt"]
    assert project.run("status", "--exit-code").returncode == 1
    assert project.run("--mode", "sideways", "status").returncode == 3


def test_the_program_with_a_server_imports_no_engine(project: Project) -> None:
    """The client's whole point: Python's start and a socket, not the engine."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "manifest", "status"],
        capture_output=True,
        text=True,
        cwd=project.folder,
        env=project.env,
        timeout=60,
    )
    assert proc.returncode == 0 and "nothing changed since last" in proc.stdout
    imported = {
        line.split("|")[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert {"manifest.entry", "manifest.client", "_socket"} <= imported
    assert not imported & {"msgspec", "blake3", "typing", "json", "manifest.repo", "typer"}


def test_a_page_is_paged_by_the_program_on_its_terminal(project: Project) -> None:
    write(project.raw / "link_templates.csv", "changed\n")
    env = {**project.env, "TERM": "xterm", "MANIFEST_PAGER": "sed 's/^/PAGED: /'"}

    def paged(server: bool) -> str:
        code, text = on_tty(
            [*PROGRAM, "status"],
            env if server else {**env, "MANIFEST_SERVER": "0"},
            cwd=project.folder,
        )
        assert code == 0
        return re.sub(r"\(\d+ \w+ ago\)", "(ago)", text)

    before = project.served()
    served = paged(server=True)
    assert project.served() == before + 1
    assert "PAGED: " in served and "\x1b[33m" in served  # paged, in colour (a terminal)
    assert "modified: link_templates.csv" in served
    assert served == paged(server=False)


def test_a_closed_pipe_ends_the_command_quietly_as_in_process(project: Project) -> None:
    def closed_reader(server: bool) -> tuple[int, bytes]:
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the first byte
        env = project.env if server else {**project.env, "MANIFEST_SERVER": "0"}
        proc = subprocess.run(
            [*PROGRAM, "status"], stdout=write_end, stderr=subprocess.PIPE, cwd=project.folder,
            env=env, timeout=60,
        )  # fmt: skip
        os.close(write_end)
        return proc.returncode, proc.stderr

    assert closed_reader(server=True) == closed_reader(server=False) == (141, b"")


def test_commands_at_once_each_get_their_own_answer(project: Project) -> None:
    write(project.raw / "link_templates.csv", "changed\n")
    before = project.served()
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: project.run("status", "--json"), range(12)))
    assert {r.returncode for r in results} == {0}
    assert {tuple(json.loads(r.stdout)["modified"]) for r in results} == {("link_templates.csv",)}
    assert project.served() == before + 12


# -- what the server leaves to the program ------------------------------------------------


def _ask_raw(project: Project, request: bytes, *, go: bool = True) -> tuple[bytes, bytes]:
    """Send ``request`` to the watcher's command socket with a pipe as standard output, and
    ``go`` once told the child's pid (else hang up then, as a client that gave up waiting
    does): the reply, and what reached the pipe."""
    st = os.stat(project.folder / ".manifest")
    read_end, write_end = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(client.address(st.st_dev, st.st_ino))
            socket.send_fds(sock, [request], [0, write_end, 2])
            os.close(write_end)
            write_end = -1
            reply = b""
            said = False
            while chunk := sock.recv(65536):
                reply += chunk
                if not said and reply.startswith(b"pid ") and b"\n" in reply:
                    if not go:
                        break
                    sock.sendall(b"go\n")
                    said = True
        os.set_blocking(read_end, False)
        try:
            written = os.read(read_end, 65536)
        except BlockingIOError:
            written = b""
        return reply, written
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def _request(argv: list[str], cwd: Path, identity: bytes | None = None) -> bytes:
    request = client.encode_request(argv, str(cwd))
    if identity is None:
        return request
    body = request.partition(b"\n")[2]
    fields = body.split(b"\0")
    fields[1] = identity
    body = b"\0".join(fields)
    return b"run %d\n" % len(body) + body


def test_what_the_server_cannot_serve_it_leaves_before_writing_a_byte(
    project: Project, tmp_path: Path
) -> None:
    other = tmp_path / "other-store"
    assert project.run("--store", str(other), "init", "--root", str(project.raw)).returncode == 0
    cases = {
        "another store": (["--store", str(other), "status"], None),
        "other code": (["status"], b"another version of the code"),
        "not a status line": (["log"], None),
    }
    before = project.watcher()["commands"]
    for what, (argv, identity) in cases.items():
        reply, written = _ask_raw(project, _request(argv, project.folder, identity))
        assert reply.splitlines()[-1].startswith(b"fallback "), (what, reply)
        assert b"exit " not in reply and written == b"", what
    after = project.watcher()["commands"]
    assert after["fallbacks"] == before["fallbacks"] + len(cases)
    assert after["served"] == before["served"]
    assert "not a plain status line" in after["last_fallback"]["reason"]
    # the program itself, on another store, is not served and answers in process
    assert project.run("--store", str(other), "status").returncode == 0
    assert project.served() == after["served"]
    # and a request the server can serve writes the answer to the pipe it was given
    reply, written = _ask_raw(project, _request(["status", "--json"], project.folder))
    assert reply.startswith(b"pid ") and reply.endswith(b"exit 0\n")
    assert json.loads(written)["store"] == str(project.folder / ".manifest")


def test_nothing_runs_for_a_client_that_does_not_follow(project: Project) -> None:
    """The child gets its command only once the client says ``go``: a program that gave up
    waiting for the watcher's first reply (5 s) answers itself, and must not be answered a
    second time by a child that started just then. A client that hangs up after the pid
    gets nothing, and the child is gone."""
    write(project.raw / "link_templates.csv", "changed\n")
    before = project.watcher()["commands"]
    reply, written = _ask_raw(project, _request(["status"], project.folder), go=False)
    assert reply.startswith(b"pid ") and b"exit" not in reply, reply
    assert written == b""
    assert _gone([int(reply.split()[1])]), "the child outlived its client"
    after = project.watcher()["commands"]
    assert (after["served"], after["fallbacks"]) == (before["served"], before["fallbacks"])
    reply, written = _ask_raw(project, _request(["status"], project.folder))  # it follows
    assert reply.endswith(b"exit 0\n") and b"modified: link_templates.csv" in written
    assert project.served() == before["served"] + 1


def _status_on_a_full_pipe(
    project: Project, program: list[str] = PROGRAM, **popen: Any
) -> tuple[subprocess.Popen[bytes], list[int]]:
    """A served status whose output (~150 KB) is more than its pipe holds, nobody reading:
    the program, and the watcher's child that runs the command, blocked writing."""
    many = project.raw / "many"
    many.mkdir()
    for n in range(6000):
        (many / f"file-{n:05d}.txt").write_bytes(b"x")
    project.run("status")  # the journal's answer after the burst, taken once
    watcher = project.watcher()["pid"]
    _one_spare(watcher)  # the command's child is the spare: the only child while it runs
    proc = subprocess.Popen(
        [*program, "status", "--limit", "100000"],
        stdout=subprocess.PIPE,
        cwd=project.folder,
        env=project.env,
        **popen,
    )
    assert proc.stdout is not None
    try:
        assert select.select([proc.stdout], [], [], 30)[0], "no output came"
        deadline = time.monotonic() + 10
        while not (running := _children(watcher)):  # the command's child (the spare went)
            assert time.monotonic() < deadline
            time.sleep(0.02)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc, running


def test_a_dead_spare_leaves_the_command_to_the_program(project: Project) -> None:
    """The spare child killed (the OOM killer sees it at the watcher's size): the next
    status is still answered, exactly as in process, never "the watcher stopped"."""
    write(project.raw / "link_templates.csv", "changed\n")
    watcher = project.watcher()["pid"]
    (spare,) = _one_spare(watcher)
    os.kill(spare, signal.SIGKILL)
    assert _gone([spare])
    result = project.run("status", "--exit-code")
    assert result.returncode == 1 and "modified: link_templates.csv" in result.stdout, result
    assert _same(result) == _same(project.run("status", "--exit-code", server=False))


def test_ctrl_c_reaches_the_command_and_the_program_waits_for_its_end(project: Project) -> None:
    """Ctrl-C while the answer is being written: the command (the watcher's child, which
    the terminal does not signal) gets it, and the program ends after it, with its code
    (130), so nothing is written after the program has ended. Here the command is stopped
    (SIGSTOP) when Ctrl-C comes: the program waits until it has ended."""
    ctrl_c_reaches_the_command(project, PROGRAM)


def ctrl_c_reaches_the_command(project: Project, program: list[str]) -> None:
    """The test above, for ``program`` (the compiled client's test runs it too)."""
    proc, running = _status_on_a_full_pipe(
        project,
        program,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        (command,) = running
        os.kill(command, signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None, "the program left before its command ended"
        os.kill(command, signal.SIGCONT)  # it takes the Ctrl-C now, and ends
        out = proc.stdout.read()
        assert proc.wait(10) == 130
        assert _gone(running, within=1.0), "the command outlived the program"
        assert out.startswith(b"root:") and proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


def test_another_users_process_gets_no_answer(project: Project) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root, to be another user")
    st = os.stat(project.folder / ".manifest")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # another user's process
        code = 1
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(client.address(st.st_dev, st.st_ino))
                try:
                    request = client.encode_request(["status"], "/")
                    socket.send_fds(sock, [request], [0, 1, 2])  # a request it could serve
                    answer = sock.recv(100)
                except OSError:
                    answer = b""
                os.write(write_end, answer or b"<closed>")
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read_end, 100)
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0 and answer == b"<closed>"


def test_a_socket_another_user_took_first_gets_nothing(project: Project) -> None:
    """Anyone can bind an abstract socket's name: when another user's process holds the
    command and journal addresses of this store (no watcher runs), the program sends it
    neither its environment nor its descriptors, does not trust an answer about changes,
    and walks."""
    if os.getuid() != 0:
        pytest.skip("needs root, to be another user")
    project.stop()
    write(project.raw / "link_templates.csv", "changed\n")
    st = os.stat(project.folder / ".manifest")
    assert project.root is not None
    names = [client.address(st.st_dev, st.st_ino), journal.address(project.root, project.cache)]
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # another user's process, listening where the watcher would
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            listeners = []
            for name in names:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(name)
                sock.listen(8)
                listeners.append(sock)
            os.write(ready_w, b"1")
            connections = received = 0
            while True:
                readable, _, _ = select.select([*listeners, stop_r], [], [], 30)
                if not readable or stop_r in readable:
                    break
                for sock in readable:
                    conn, _ = sock.accept()
                    connections += 1
                    with conn:
                        conn.settimeout(2)
                        with contextlib.suppress(OSError):
                            while chunk := conn.recv(65536):
                                received += len(chunk)
            os.write(result_w, f"{connections} {received}".encode())
            code = 0
        finally:
            os._exit(code)
    assert os.read(ready_r, 1) == b"1"
    try:
        result = project.run("status", "--exit-code")
    finally:
        os.write(stop_w, b"x")
        _, status = os.waitpid(pid, 0)
    connections, received = map(int, os.read(result_r, 100).split())
    for fd in (ready_r, ready_w, stop_r, stop_w, result_r, result_w):
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert connections >= 2 and received == 0, (connections, received)  # both asked, told nothing
    assert result.returncode == 1 and "modified: link_templates.csv" in result.stdout


@pytest.mark.parametrize("who", ["the client", "the watcher"])
def test_a_command_goes_when_its_client_or_the_watcher_goes(project: Project, who: str) -> None:
    """A status whose reader does not read blocks in the child on a full pipe. When its
    program is killed, or the watcher is stopped, the child is killed too: it writes nothing
    more (a child left behind would write into the pipe, or a terminal, after the program
    had ended, or had said the watcher stopped and run nothing). A command whose program
    went is not counted as answered."""
    proc, running = _status_on_a_full_pipe(project)
    assert proc.stdout is not None
    try:
        if who == "the client":
            before = project.served()
            proc.kill()
            proc.wait(10)
            assert _gone(running), "the command's child outlived its client"
            assert project.run("status").returncode == 0  # answered: counted
            assert project.served() == before + 1
        else:
            project.stop()
            assert proc.wait(10) == 3  # "the watcher stopped while it answered"
        assert _gone(running), f"the command's child outlived {who}"
        while proc.stdout.read(65536):  # every writer gone: the pipe ends
            pass
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def test_a_watcher_without_standard_descriptors_serves_the_same(tmp_path: Path, raw: Path) -> None:
    """Started with 0-2 closed (no ``sys.stdout`` or ``sys.stderr``: a supervisor that
    gives it nothing), the watcher still serves, each client descriptor in its place
    (stdout on stdout, stderr on stderr). It served nothing before: flushing its missing
    streams before a fork failed."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.move(raw, folder / "raw")
    project = Project(folder, folder / "raw", closed_std=True)
    try:
        write(project.raw / "link_templates.csv", "changed\n")
        served = project.run("status", "--exit-code")
        assert project.served() >= 2, project.watcher()["commands"]  # the first status, this one
        assert _same(served) == _same(project.run("status", "--exit-code", server=False))
        assert served.returncode == 1 and "modified: link_templates.csv" in served.stdout
        wrong = project.run("status", "--limit", "-1")  # an error: on stderr, exit 2
        assert _same(wrong) == _same(project.run("status", "--limit", "-1", server=False))
    finally:
        project.stop()


def test_ctrl_c_while_the_watcher_has_not_answered_yet(project: Project) -> None:
    """Ctrl-C while the program waits for the watcher's first reply (here a stopped
    watcher: the connection is queued, the request sent): exit 130 and no traceback."""
    watcher = project.watcher()["pid"]
    os.kill(watcher, signal.SIGSTOP)
    try:
        proc = subprocess.Popen(
            [*PROGRAM, "status"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=project.folder,
            env=project.env,
            # as a terminal's program has it (a background job's children ignore SIGINT)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        time.sleep(1.5)  # it has connected and sent, and waits (up to 5 s) for an answer
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
    finally:
        os.kill(watcher, signal.SIGCONT)
    # the request (and the program's descriptors in it) reaches the watcher now: it runs
    # nothing for a program that has gone, so nothing is written after the exit
    out, err = proc.communicate(timeout=10)
    assert out == b"" and b"Traceback" not in err, (out, err)
    assert project.watcher()["commands"]["served"] == 1  # the fixture's first status only


def test_a_killed_watcher_leaves_the_program_to_answer(project: Project) -> None:
    write(project.raw / "link_templates.csv", "changed\n")
    pid = project.watcher()["pid"]
    spares = _one_spare(pid)
    os.kill(pid, signal.SIGKILL)
    assert _gone(spares), "the spare child outlived its watcher"
    deadline = time.monotonic() + 10
    while project.watcher().get("running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    result = project.run("status", "--exit-code")
    assert result.returncode == 1 and "modified: link_templates.csv" in result.stdout
    assert _same(result) == _same(project.run("status", "--exit-code", server=False))


# -- the client's own parts ---------------------------------------------------------------


def test_the_client_finds_the_store_the_settings_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the client looks equals where load_config looks, or the client does not guess."""
    top = tmp_path / "top"
    deep = top / "a" / "b"
    deep.mkdir(parents=True)
    (top / ".manifest").mkdir()
    (top / ".manifest" / "config.toml").write_text('root = "data"\n')
    monkeypatch.setenv("HOME", str(tmp_path))  # for ~ in a setting
    home = tmp_path / "dagster"
    (home / "state" / "raw").mkdir(parents=True)
    (home / "state" / "raw" / "FORMAT").write_text("1\n")
    cases: list[tuple[dict[str, object], dict[str, str], Path]] = [
        ({}, {}, deep),  # found walking up
        ({}, {}, tmp_path),  # nothing found: ./.manifest
        ({"store": "s"}, {}, deep),
        ({"store": "~/x"}, {}, deep),
        ({}, {"RAW_STATE_DIR": "../s"}, deep),
        ({}, {"DAGSTER_HOME": str(home)}, tmp_path),  # the only store under state/
        ({"name": "other"}, {"DAGSTER_HOME": str(home)}, deep),
    ]
    for group, env, cwd in cases:
        found = client.find_store_folder(group, env, str(cwd))
        assert found is not None
        config = load_config(
            store=group.get("store"),  # type: ignore[arg-type]
            env=env,
            cwd=cwd,
            discover=True,
            name=group.get("name"),  # type: ignore[arg-type]
        )
        assert os.path.realpath(found) == str(config.store), (group, env, cwd)
    # no guess where the settings name a bucket or where they are ambiguous
    assert client.find_store_folder({"store": "s3://bucket/state"}, {}, str(tmp_path)) is None
    (home / "state" / "second").mkdir()
    (home / "state" / "second" / "FORMAT").write_text("1\n")
    assert client.find_store_folder({}, {"DAGSTER_HOME": str(home)}, str(tmp_path)) is None
    with pytest.raises(AmbiguousStoreError):
        load_config(env={"DAGSTER_HOME": str(home)}, cwd=tmp_path, discover=True)


def test_the_code_identity_changes_with_any_module(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    shutil.copytree(
        Path(client.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    first = client.code_identity(package)
    assert client.code_identity(package) == first
    module = package / "root" / "scan.py"
    module.write_text(module.read_text() + "\n")
    assert client.code_identity(package) != first
    assert client.code_identity() != first  # another folder is other code


def test_ctrl_c_in_the_middle_of_a_page_skips_its_rest() -> None:
    """The program's side alone, over a real socket to a real process standing in for the
    command: Ctrl-C while a page is being read goes on to the command, the rest of the page
    is read and dropped (never taken for the server's lines), and the code is 130 once the
    command's exit comes."""
    ours, theirs = socket.socketpair()
    command = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = client._Lines(ours)
        page = b"exit 7\nfallback no\n" * 10  # a page whose text looks like the protocol
        theirs.sendall(b"page %d\n" % len(page) + page[:25])
        assert lines.line() == b"page %d" % len(page)
        lines.owed, lines.paged = len(page), True  # as block() leaves them when Ctrl-C cuts
        with ThreadPoolExecutor(1) as pool:
            code = pool.submit(client._interrupted, lines, command.pid)
            assert command.wait(10) == -signal.SIGINT  # the command got the Ctrl-C
            theirs.sendall(page[25:])  # the rest of the page: its "exit 7" is text
            time.sleep(0.3)
            assert not code.done(), "the program ended before the command's exit came"
            theirs.sendall(b"exit 0\n")
            assert code.result(10) == 130
    finally:
        command.kill()
        command.wait(10)
        ours.close()
        theirs.close()
