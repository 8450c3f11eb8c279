"""The real command in a real process: exit codes, colour, start-up imports."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import on_tty, write


@pytest.fixture
def run(raw: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAW_", "DAGSTER_"))}
    env.update(
        RAW_DATA_DIR=str(raw), RAW_STATE_DIR=str(tmp_path / "state"), RAW_SCAN_COOLDOWN_SEC="0"
    )

    def call(
        *args: str, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "manifest", *args],
            capture_output=True,
            text=True,
            env={**env, **(extra_env or {})},
            timeout=60,
        )

    call.env = env  # type: ignore[attr-defined]
    assert call("init").returncode == 0  # the store these tests use
    return call


def test_exit_codes(run, raw: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert run("status", "--exit-code").returncode == 1  # no last: everything is added
    assert run("snapshot", "--ref", "last").returncode == 0
    assert run("status", "--exit-code").returncode == 0
    write(raw / "link_templates.csv", "changed\n")
    assert run("status", "--exit-code").returncode == 1
    assert run("diff", "last", "--exit-code").returncode == 1
    assert run("no-such-command").returncode == 2
    bad = run("show", "zzzz")
    assert bad.returncode == 3
    assert bad.stderr.startswith("manifest: error: unknown revision 'zzzz'")
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    (tmp_path / "state" / "refs" / "last.lock").write_text("1 host\n")
    held = run("reset", "last", "last", extra_env={"RAW_LOCK_TIMEOUT_SEC": "0"})
    assert held.returncode == 4 and "last.lock exists" in held.stderr
    assert run("--mode", "nope", "status").returncode == 3


def test_configuration_error_names_the_variable(run) -> None:  # type: ignore[no-untyped-def]
    out = run("status", extra_env={"RAW_SCAN_HASH_MODE": "sha1"})
    assert out.returncode == 3
    assert "RAW_SCAN_HASH_MODE='sha1'" in out.stderr and "content_hash or mtime_size" in out.stderr


def _run_on_tty(args: list[str], env: dict[str, str]) -> str:
    return on_tty([sys.executable, "-m", "manifest", *args], env)[1]


def test_colour_on_a_terminal_and_plain_otherwise(run, raw: Path) -> None:  # type: ignore[no-untyped-def]
    run("snapshot", "--ref", "last")
    write(raw / "link_templates.csv", "changed\n")
    env = {**run.env, "TERM": "xterm"}
    assert "\x1b[33m" in _run_on_tty(["--no-pager", "status"], env)
    assert "\x1b[" not in _run_on_tty(["--no-pager", "status"], {**env, "NO_COLOR": "1"})
    piped = run("status")
    assert "modified: link_templates.csv" in piped.stdout and "\x1b[" not in piped.stdout


def _imported(run, *args: str) -> set[str]:  # type: ignore[no-untyped-def]
    """The top-level modules ``python -m manifest ARGS`` imports (``-X importtime``)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "manifest", *args],
        capture_output=True,
        text=True,
        env=run.env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {
        line.split("|")[-1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }


def test_status_imports_neither_typer_nor_dagster_nor_rich(run) -> None:  # type: ignore[no-untyped-def]
    """A plain `status` takes the quick path (manifest.entry): no Typer, no Click; any
    other command line still goes through Typer."""
    imported = _imported(run, "--cooldown", "0", "status", "--json")
    assert "msgspec" in imported  # the measurement works
    assert not imported & {"typer", "click", "dagster", "rich", "dagster_glue", "pandas"}
    assert "typer" in _imported(run, "log")
    assert "typer" in _imported(run, "status", "--json", "--json")  # twice: Typer's rule


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "manifest"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "status" in proc.stdout


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("manifest: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_output_errors_exit_3_a_closed_pipe_is_quiet(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert run("snapshot", "--ref", "last").returncode == 0
    base = [sys.executable, "-m", "manifest"]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [*base, "log"], stdout=full, stderr=subprocess.PIPE, text=True, env=run.env
        )
    assert proc.returncode == 3
    assert "No space left on device" in _one_error_line(proc)
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads: the output is closed
    proc = subprocess.run(
        [*base, "log"], stdout=writer, stderr=subprocess.PIPE, text=True, env=run.env
    )
    os.close(writer)
    # a reader that quit early (`manifest log | head`) is no error: quiet, 141 as git
    assert (proc.returncode, proc.stderr) == (141, "")
    piped = subprocess.run(
        f"{sys.executable} -m manifest log | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        env=run.env,
    )
    assert piped.returncode == 0 and piped.stderr == ""


def test_an_unreadable_root_is_exit_3_by_flag_and_by_variable(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = str(tmp_path / "nope")
    fresh = {"RAW_STATE_DIR": str(tmp_path / "fresh")}  # a store that records no root yet
    by_flag = run("--root", missing, "snapshot", extra_env=fresh)
    by_env = run("snapshot", extra_env={**fresh, "RAW_DATA_DIR": missing})
    assert by_flag.returncode == by_env.returncode == 3
    assert "does not exist" in _one_error_line(by_flag) and "does not exist" in _one_error_line(
        by_env
    )
    # against the store that records another root, the disagreement is the error
    other = run("--root", missing, "status")
    assert other.returncode == 3
    line = _one_error_line(other)
    assert line.startswith("manifest: error: root: --root gives") and "records" in line


def test_store_faults_are_one_line(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    assert run("snapshot", "--ref", "last").returncode == 0
    (state / "index").unlink()
    (state / "index").mkdir()  # a folder where the stat cache should be
    status = run("status")
    assert status.returncode == 0 and status.stderr == ""
    (state / "objects").rename(tmp_path / "objects-away")
    (state / "objects").write_text("not a folder")
    fsck = run("fsck")
    assert fsck.returncode == 3 and "Traceback" not in fsck.stderr + fsck.stdout
    assert "DAMAGED" in fsck.stdout
    gc = run("gc", "--grace", "nan")
    assert gc.returncode == 3 and "--grace" in _one_error_line(gc)


def test_a_terminal_pages_through_pager_and_a_pipe_never(run, raw: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run("snapshot", "--ref", "last")
    for i in range(30):
        write(raw / "many" / f"f{i:02}.csv", f"{i}\n")
    paged = tmp_path / "paged.txt"
    env = {**run.env, "TERM": "xterm", "PAGER": f"cat > {paged}"}
    shown = _run_on_tty(["status", "--limit", "5"], env)
    text = paged.read_text()
    assert shown == "" and "30 paths: 30 added" in text  # all of it went to the pager
    assert "      30  many/" in text and "... and 25 more added" in text
    assert "\x1b[32m" in text  # colours decided for the terminal, kept through the pager
    paged.unlink()
    _run_on_tty(["--no-pager", "status"], env)
    assert not paged.exists()
    piped = run("status", extra_env={"PAGER": f"cat > {paged}"})
    assert not paged.exists() and piped.stdout.count("added:") == 30


def test_a_message_with_any_bytes_is_kept_escaped_by_every_command(run) -> None:  # type: ignore[no-untyped-def]
    """Issue 22.2: `snapshot -m` with a byte that is not UTF-8 works as `reset -m` does."""
    message = os.fsdecode(b"caf\xe9")
    snap = run("snapshot", "--ref", "last", "-m", message)
    assert snap.returncode == 0, snap.stderr
    reset = run("reset", "last", "last", "-m", message)
    assert reset.returncode == 0, reset.stderr
    shown = run("show", "last")
    assert "message  caf\\xe9" in shown.stdout
    assert "snapshot: caf\\xe9" in run("log").stdout


def test_after_a_kill_9_holding_a_lock_fsck_warns_and_the_next_writer_proceeds(
    run, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import signal

    assert run("snapshot", "--ref", "last").returncode == 0
    code = (
        "import sys, time; from pathlib import Path; from manifest.fsutil import LockFile;"
        "lock = LockFile(Path(sys.argv[1])); lock.acquire(); print('held', flush=True);"
        "time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "state" / "refs" / "last")],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    fsck = run("fsck")
    assert fsck.returncode == 0, fsck.stdout
    assert "warning" in fsck.stdout and "left by a crash" in fsck.stdout
    again = run("snapshot", "--ref", "last", "-m", "after the crash")
    assert again.returncode == 0, again.stderr
    assert "took over" in again.stderr
    assert run("fsck").stdout.strip().endswith("ok")


def test_ctrl_c_during_a_status_ends_it_with_130_and_no_traceback(  # type: ignore[no-untyped-def]
    run, raw: Path
) -> None:
    """Ctrl-C (the terminal signals the whole foreground group) while `status` hashes a
    200 GB sparse file: exit 130, nothing on stderr, no scan worker left behind."""
    import signal
    import time

    assert run("snapshot", "--ref", "last").returncode == 0
    big = raw / "big.bin"
    with open(big, "wb") as out:
        out.truncate(200 << 30)
    old = time.time() - 120  # settled: it is hashed now
    os.utime(big, (old, old))
    proc = subprocess.Popen(
        [sys.executable, "-m", "manifest", "status"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**run.env, "MANIFEST_SERVER": "0"},
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        time.sleep(1.5)
        assert proc.poll() is None, "the status ended before the Ctrl-C"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert (proc.returncode, err) == (130, "")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 0)
        raise AssertionError("a process of the status outlived it")
