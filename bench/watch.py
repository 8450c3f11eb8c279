#!/usr/bin/env python
"""Benchmark of the watcher (``manifest watch``): ``python bench/watch.py N [--runs 5]``.

On the deterministic tree for N (bench/gen_tree.py, under /tmp/bench_trees) with a fresh
store (``snapshot --ref last``) and its own git dir, measured round-robin (one untimed
warm-up round, then ``--runs`` rounds; in each: start the watcher, one untimed ``status``
that walks and records the token, then):

(a) ``manifest status`` as a process, watcher running, quiet tree (from the journal),
    answered by the watcher's command server; CPU: the program's and the watcher's for it
(a0) the same with ``MANIFEST_SERVER=0`` (the program runs the status itself)
(ac) the same as (a) with the compiled client (``manifest build-client``, built for this run
    into a temporary folder): no Python start
(p) ``python -c pass``: the interpreter's start, the floor of any Python program
(d) in process: ``Repository(load_config(...)).status()``, watcher running
(e) in process: ``repo.begin()`` (the Dagster tick's engine call), watcher running
(f) ``manifest status`` as a process, watcher running, one file edited (served); (f0) the
    same with ``MANIFEST_SERVER=0``; (fc) with the compiled client
(g) the same in process; the file is restored
    (a), (ac), (a0), (p), (f), (fc) and (f0) run REPEAT times a round, interleaved
    -- the watcher is stopped --
(b1) ``manifest status``, no watcher, one file edited (a walk); (c1) git status with it
(b) ``manifest status`` as a process, no watcher (a walk)
(c) ``git status --porcelain`` (core.untrackedCache=true), the peer; (c0) the same without
    the untracked cache, as bench/run.py's git peer runs

Wall time and CPU time (user+sys: ``os.wait4`` for a process, its reaped children included;
``time.process_time`` in process). Every quiet run is checked to have come from the journal,
every walk to have walked, and every tree to be clean; anything else aborts. Then, watcher
running, ``--runs`` bursts of 10,000 file creations in a new folder of the tree: the watcher's
CPU (``/proc/PID/stat``) and RSS (``watch --status --json``); the folder is deleted and a
snapshot taken, so the tree is back to base. Prints a table and writes the section for N
into docs/benchmarks.md (replacing only that section).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import gen_tree  # noqa: E402
import run as harness  # noqa: E402  (the house harness: environment, machine, byte-compile)

DOC = REPO / "docs" / "benchmarks.md"
TREES = harness.TREES
MANIFEST = harness.MANIFEST
BURST_FILES = 10_000
REPEAT = 5  # (a), (ac), (a0), (p), (f), (fc), (f0) per round: short, and a VM's timing is noisy
BURST_DIR = "_watch_burst"  # inside the tree; removed again after each burst
JOURNAL_MARK = "walk: the watcher's journal shows"  # "(no walk: ..." or "(no full walk: ..."
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Measurement:
    key: str
    title: str
    command: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float, timed: bool) -> None:
        if timed:
            self.wall.append(wall)
            self.cpu.append(cpu)


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> str:
    v = seconds * 1000
    return f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms"


def spread(values: Sequence[float]) -> str:
    return f"{ms(med(values))} ({ms(min(values))}-{ms(max(values))})"


# ---------------------------------------------------------------------------- processes
def run_proc(argv: Sequence[str], env: dict[str, str]) -> tuple[float, float, str]:
    """One process: wall time around it, CPU (user+sys of it and its reaped children) from
    ``os.wait4``, its stdout. A non-zero exit aborts."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.stdout.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"{shlex.join(argv)} exited {proc.returncode}: {tail}")
    return wall, usage.ru_utime + usage.ru_stime, out.decode()


def proc_cpu(pid: int) -> float:
    """A process's own CPU seconds so far (utime + stime, ``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of the line


def proc_cpu_total(pid: int) -> float:
    """A process's CPU seconds so far with its reaped children's (the command server's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def proc_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# ---------------------------------------------------------------------------- the bench
class Bench:
    def __init__(self, n: int, tree: Path, store: Path, gitdir: Path) -> None:
        self.n, self.tree, self.store = n, tree, store
        self.env = harness.clean_env()  # RAW_SCAN_COOLDOWN_SEC=0, no other RAW_*
        self.env.pop("MANIFEST_SERVER", None)  # the command server on, as by default
        self.git = ["git", f"--git-dir={gitdir}", f"--work-tree={tree}"]
        self.plain_env = {**self.env, "GIT_INDEX_FILE": str(gitdir / "index.plain")}
        self.alone_env = {**self.env, "MANIFEST_SERVER": "0"}  # no command server
        self.pid: int | None = None
        self.fast = str(store.parent / "manifest-fast")  # the compiled client (built in main)

    @contextlib.contextmanager
    def edited(self) -> Iterator[str]:
        """One file of the tree edited (a line appended), then restored, bytes and mtime."""
        rel = gen_tree.rel_path(self.n // 2)
        path = self.tree / rel
        original = path.read_bytes()
        path.write_bytes(original + b"edited\n")
        try:
            yield rel
        finally:
            path.write_bytes(original)
            os.utime(path, ns=(gen_tree.MTIME_NS, gen_tree.MTIME_NS))

    def manifest(self, *rest: str, program: str = MANIFEST) -> list[str]:
        return [program, "--store", str(self.store), "--root", str(self.tree), *rest]

    def status_json(self) -> dict[str, Any]:
        return json.loads(run_proc(self.manifest("status", "--json"), self.env)[2])

    def check_clean(self, st: dict[str, Any], source: str, what: str) -> None:
        changed = [k for k in ("added", "modified", "removed", "unstable", "problems") if st[k]]
        if changed or st["files"] != self.n or st["scan"]["source"] != source:
            raise RuntimeError(
                f"{what}: expected a clean tree of {self.n} files from the {source!r} scan, got "
                f"files={st['files']} scan={st['scan']} non-empty={changed}"
            )

    # -- the watcher ---------------------------------------------------------------------
    def watcher(self) -> dict[str, Any]:
        return json.loads(run_proc(self.manifest("watch", "--status", "--json"), self.env)[2])

    def start_watcher(self) -> tuple[float, float]:
        """Start it and record a token (one walk, untimed); returns the start's wall time
        (until it answers) and the watcher's CPU for it."""
        wall, _, _ = run_proc(self.manifest("watch", "--start"), self.env)
        info = self.watcher()
        if not info["running"]:
            raise RuntimeError(f"the watcher did not start: {info}")
        self.pid = int(info["pid"])
        cpu = proc_cpu(self.pid)
        self.check_clean(self.status_json(), "scan", "first status after starting the watcher")
        self.check_clean(self.status_json(), "journal", "second status with the watcher")
        return wall, cpu

    def stop_watcher(self) -> None:
        if self.pid is None:
            return
        run_proc(self.manifest("watch", "--stop"), self.env)
        deadline = time.monotonic() + 30
        while not proc_gone(self.pid):  # still bound to its socket until it exits
            if time.monotonic() > deadline:
                raise RuntimeError(f"the watcher (pid {self.pid}) did not exit")
            time.sleep(0.02)
        self.pid = None
        if self.watcher()["running"]:
            raise RuntimeError("a watcher still answers after --stop")

    # -- git -------------------------------------------------------------------------------
    def setup_git(self, gitdir: Path) -> None:
        """As bench/run.py's: init + add + commit (kept across runs); then
        ``index.plain``, a copy of the index taken before any untracked cache is added."""
        ok = (gitdir / "HEAD").exists() and (gitdir / "index.plain").exists()
        if ok:
            probe = [*self.git, "rev-parse", "--verify", "-q", "HEAD"]
            ok = subprocess.run(probe, capture_output=True).returncode == 0
        if not ok:
            harness.fresh(gitdir)
            print("  git: init + add + commit", flush=True)
            subprocess.run([*self.git, "init", "-q"], check=True)
            subprocess.run([*self.git, "config", "gc.auto", "0"], check=True)
            subprocess.run([*self.git, "add", "-A"], check=True)
            ident = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
            subprocess.run([*self.git, *ident, "commit", "-q", "-m", "bench tree"], check=True)
            shutil.copyfile(gitdir / "index", gitdir / "index.plain")
        subprocess.run([*self.git, "config", "gc.auto", "0"], check=True)
        subprocess.run([*self.git, "config", "core.untrackedCache", "true"], check=True)

    def git_uc(self) -> list[str]:
        return [*self.git, "status", "--porcelain"]

    def git_plain(self) -> list[str]:
        return [*self.git, "-c", "core.untrackedCache=false", "status", "--porcelain"]


def trace_scans(repo: Any) -> list[str]:
    """Record the source (``scan`` or ``journal``) of every scan ``repo`` makes."""
    sources: list[str] = []
    scan: Callable[..., Any] = repo.root.scan

    def traced(*args: Any, **kwargs: Any) -> Any:
        result = scan(*args, **kwargs)
        sources.append(result.source)
        return result

    repo.root.scan = traced
    return sources


def measure_rounds(b: Bench, runs: int) -> tuple[dict[str, Measurement], dict[str, list[float]]]:
    from manifest import Repository, load_config

    m = {
        "a": Measurement("a", "(a) manifest status, watcher, quiet (served)", "manifest status"),
        "ac": Measurement(
            "ac", "(ac) the same, the compiled client (served)", "manifest-fast status"
        ),
        "a0": Measurement(
            "a0", "(a0) the same, run by the program", "MANIFEST_SERVER=0 manifest status"
        ),
        "p": Measurement("p", "(p) Python's start", "python -c pass"),
        "d": Measurement(
            "d",
            "(d) status in process, watcher, quiet",
            "Repository(load_config(root=T, store=S, cooldown_sec=0, env={})).status()",
        ),
        "e": Measurement("e", "(e) tick proxy in process: begin(), watcher, quiet", "repo.begin()"),
        "f": Measurement("f", "(f) manifest status, watcher, one edit (served)", "manifest status"),
        "fc": Measurement(
            "fc", "(fc) the same, the compiled client (served)", "manifest-fast status"
        ),
        "f0": Measurement(
            "f0", "(f0) the same, run by the program", "MANIFEST_SERVER=0 manifest status"
        ),
        "g": Measurement(
            "g", "(g) status in process, watcher, one edit", "Repository(...).status()"
        ),
        "b1": Measurement("b1", "(b1) manifest status, no watcher, one edit", "manifest status"),
        "c1": Measurement(
            "c1", "(c1) peer: git status (untracked cache), one edit", "git status --porcelain"
        ),
        "b": Measurement("b", "(b) manifest status, no watcher (walk)", "manifest status"),
        "c": Measurement(
            "c",
            "(c) peer: git status (untracked cache)",
            "git status --porcelain   # core.untrackedCache=true",
        ),
        "c0": Measurement(
            "c0",
            "(c0) git status (no untracked cache, bench/run.py's)",
            "git -c core.untrackedCache=false status --porcelain   # GIT_INDEX_FILE=index.plain",
        ),
    }
    extra: dict[str, list[float]] = {"start_wall": [], "start_cpu": []}

    def config() -> Any:
        return load_config(root=b.tree, store=b.store, cooldown_sec=0, env={})

    quiet_tail = f"nothing changed since last ({b.n} files)"
    for i in range(-1, runs):
        timed = i >= 0
        print(f"  round {'warm-up' if not timed else i + 1}", flush=True)
        start_wall, start_cpu = b.start_watcher()
        if timed:
            extra["start_wall"].append(start_wall)
            extra["start_cpu"].append(start_cpu)

        assert b.pid is not None
        served = b.watcher()["commands"]["served"]
        watcher_cpu = proc_cpu_total(b.pid)
        runs_a: dict[str, list[tuple[float, float]]] = {"a": [], "ac": []}
        for _ in range(REPEAT):
            # each served command after one the watcher does not serve, as a prompt's
            # status comes after a pause: back to back, a command can wait for the spare
            # forked after the last to finish its rehearsal (a few ms)
            for key, env, program in (
                ("a", b.env, MANIFEST),
                ("a0", b.alone_env, MANIFEST),
                ("ac", b.env, b.fast),
            ):
                wall, cpu, out = run_proc(b.manifest("status", program=program), env)
                if JOURNAL_MARK not in out or quiet_tail not in out:
                    raise RuntimeError(f"({key}) did not come from the journal:\n{out[-1000:]}")
                if key in runs_a:
                    runs_a[key].append((wall, cpu))
                else:
                    m[key].add(wall, cpu, timed)
            wall, cpu, _ = run_proc([sys.executable, "-c", "pass"], b.env)
            m["p"].add(wall, cpu, timed)
        # the watcher's part (its forked children's), in 10 ms ticks: its mean per served
        # command (the (a0) and (p) runs beside cost it nothing, or a journal question at most)
        share = (proc_cpu_total(b.pid) - watcher_cpu) / (2 * REPEAT)
        for key, runs_key in runs_a.items():
            for wall, cpu in runs_key:
                m[key].add(wall, cpu + share, timed)

        t0, c0 = time.perf_counter(), time.process_time()
        st = Repository(config()).status()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if st.scan_source != "journal" or st.changes or st.files != b.n:
            raise RuntimeError(f"(d) scan {st.scan_source} ({st.scan_reason}), {st.files} files")
        m["d"].add(wall, cpu, timed)

        repo = Repository(config())
        sources = trace_scans(repo)
        t0, c0 = time.perf_counter(), time.process_time()
        res = repo.begin()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if res.outcome != "unchanged" or sources != ["journal"]:
            raise RuntimeError(f"(e) begin: {res.outcome} ({res.message}), scans {sources}")
        m["e"].add(wall, cpu, timed)

        with b.edited() as rel:
            watcher_cpu = proc_cpu_total(b.pid)
            runs_f: dict[str, list[tuple[float, float]]] = {"f": [], "fc": []}
            for _ in range(REPEAT):
                for key, env, program in (
                    ("f", b.env, MANIFEST),
                    ("f0", b.alone_env, MANIFEST),
                    ("fc", b.env, b.fast),
                ):
                    wall, cpu, out = run_proc(b.manifest("status", program=program), env)
                    if JOURNAL_MARK not in out or "listed 3 folder(s)" not in out or rel not in out:
                        raise RuntimeError(f"({key}) did not come from the journal:\n{out[-1000:]}")
                    if key in runs_f:
                        runs_f[key].append((wall, cpu))
                    else:
                        m[key].add(wall, cpu, timed)
            share = (proc_cpu_total(b.pid) - watcher_cpu) / (2 * REPEAT)
            for key, runs_key in runs_f.items():
                for wall, cpu in runs_key:
                    m[key].add(wall, cpu + share, timed)
            answered = b.watcher()["commands"]["served"] - served
            if answered != 4 * REPEAT:
                raise RuntimeError(f"the watcher served {answered} of {4 * REPEAT} commands")

            t0, c0 = time.perf_counter(), time.process_time()
            st = Repository(config()).status()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if st.scan_source != "journal" or st.changes.modified != (rel,):
                raise RuntimeError(f"(g) scan {st.scan_source} ({st.scan_reason}), {st.changes}")
            m["g"].add(wall, cpu, timed)

        b.stop_watcher()
        with b.edited() as rel:
            wall, cpu, out = run_proc(b.manifest("status"), b.env)
            if JOURNAL_MARK in out or rel not in out:
                raise RuntimeError(f"(b1) did not walk and find the edit:\n{out[-1000:]}")
            m["b1"].add(wall, cpu, timed)
            wall, cpu, out = run_proc(b.git_uc(), b.env)
            if out.split() != ["M", rel]:
                raise RuntimeError(f"(c1) git status did not show the edit alone:\n{out[:500]}")
            m["c1"].add(wall, cpu, timed)

        wall, cpu, out = run_proc(b.manifest("status"), b.env)
        if JOURNAL_MARK in out or quiet_tail not in out:
            raise RuntimeError(f"(b) did not walk a clean tree:\n{out[-1000:]}")
        m["b"].add(wall, cpu, timed)

        for key, argv, env in (("c", b.git_uc(), b.env), ("c0", b.git_plain(), b.plain_env)):
            wall, cpu, out = run_proc(argv, env)
            if out.strip():
                raise RuntimeError(f"({key}) git status is not clean:\n{out[:500]}")
            m[key].add(wall, cpu, timed)
    for x in m.values():
        print(f"  {x.title}: wall {spread(x.wall)}, CPU {spread(x.cpu)}", flush=True)
    return m, extra


def measure_bursts(b: Bench, runs: int) -> dict[str, Any]:
    """``runs`` bursts of BURST_FILES creations in a new folder, each deleted again; the
    watcher's CPU and RSS; then a snapshot, and a check that the tree is back to base."""
    b.start_watcher()
    assert b.pid is not None
    info = b.watcher()
    res: dict[str, Any] = {"rss_quiet_kib": info["rss_kib"], "create_cpu": [], "delete_cpu": []}
    res["rss_burst_kib"], res["events"], res["overflows"], res["queued"] = [], [], [], []
    folder = b.tree / BURST_DIR
    for _ in range(runs):
        before, cpu0 = b.watcher(), proc_cpu(b.pid)
        folder.mkdir()
        for k in range(BURST_FILES):
            (folder / f"f{k:05d}.txt").write_bytes(b"burst %d\n" % k)
        after = b.watcher()  # answered under the journal's lock, after every queued event
        cpu1 = proc_cpu(b.pid)
        shutil.rmtree(folder)
        b.watcher()
        cpu2 = proc_cpu(b.pid)
        res["create_cpu"].append(cpu1 - cpu0)
        res["delete_cpu"].append(cpu2 - cpu1)
        res["rss_burst_kib"].append(after["rss_kib"])
        res["events"].append(after["events"] - before["events"])
        res["overflows"].append(after["overflows"] - before["overflows"])
        res["queued"].append(after["queued"])
    res["hwm_kib"] = 0
    for line in Path(f"/proc/{b.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            res["hwm_kib"] = int(line.split()[1])
    run_proc(b.manifest("snapshot", "--ref", "last", "-m", "after the bursts"), b.env)
    b.check_clean(b.status_json(), "journal", "status after the bursts and the snapshot")
    b.stop_watcher()
    print(
        f"  burst of {BURST_FILES:,} creations: watcher CPU {spread(res['create_cpu'])}, "
        f"deleting them {spread(res['delete_cpu'])}; RSS quiet {res['rss_quiet_kib']} KiB, "
        f"after each burst {res['rss_burst_kib']} KiB, journal {res['queued']} entries; "
        f"events {res['events']}, overflows {res['overflows']}",
        flush=True,
    )
    return res


# ---------------------------------------------------------------------------- the report
def section(
    n: int,
    runs: int,
    digest: str,
    m: dict[str, Measurement],
    extra: dict[str, list[float]],
    burst: dict[str, Any],
    loads: tuple[str, str],
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mach = harness.machine()
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout
    vers = {
        "manifest": metadata.version("raw-manifest"),
        "inotify_simple": metadata.version("inotify_simple"),
        "git": git_version.strip().removeprefix("git version "),
    }

    def ratio(a: str, c: str, kind: str) -> str:
        return f"{med(getattr(m[a], kind)) / med(getattr(m[c], kind)):.2f}x"

    mib = 1024.0
    lines = [
        f"<!-- watch:N={n} start (generated by bench/watch.py; edits here are overwritten) -->",
        f"## Watcher: quiet status and tick, N = {n:,} files",
        "",
        f"Run {now}: `.venv/bin/python bench/watch.py {n} --runs {runs}`. Tree "
        f"`/tmp/bench_trees/t{n}` (`bench/gen_tree.py`, digest `{digest[:16]}`), a fresh store "
        "(content_hash, `manifest snapshot --ref last`), `RAW_SCAN_COOLDOWN_SEC=0`. One untimed "
        f"warm-up round, then {runs} rounds, round-robin: start the watcher (`watch --start`) "
        "and run one untimed `status` (it walks and records the token) and one `status --json` "
        "(checked: `scan.source` is `journal`); then (a), (d), (e); stop the watcher "
        "(`watch --stop`, waited for); then (b), (c), (c0). Each (a) is checked to say it did "
        "not walk, (d) `Status.scan_source == 'journal'`, (e) `begin()` answered `unchanged` "
        "from a journal scan, (b) walked; every answer is a clean tree of N files, or the run "
        "aborts. CPU is user+sys: of the process and its reaped children (`os.wait4`: the "
        "scan workers of (b) included, git's threads are its own), or `time.process_time()` "
        "in process.",
        "",
        "Machine: "
        + ", ".join(f"{k} {v}" for k, v in mach.items() if k in ("nproc", "cpu", "RAM"))
        + f"; `uptime` before: {loads[0]}; after: {loads[1]}.  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()) + ".",
        "",
        "| measurement | wall, median (min-max) | CPU, median (min-max) | command |",
        "|---|---|---|---|",
    ]
    for x in m.values():
        lines.append(
            f"| {x.title} | {spread(x.wall)} | {spread(x.cpu)} | `{harness.cell(x.command)}` |"
        )
    lines.append(
        f"| watcher start-up (until it answers) | {spread(extra['start_wall'])} | "
        f"{spread(extra['start_cpu'])} (the watcher's) | `manifest watch --start` |"
    )
    events = int(med(burst["events"]))
    rss, queued = burst["rss_burst_kib"], burst["queued"]
    per_path = (rss[-1] - burst["rss_quiet_kib"]) * 1024 / max(queued[-1], 1)
    overflows = sum(burst["overflows"])
    lines += [
        "",
        "| figure | wall | CPU |",
        "|---|---|---|",
        f"| (a) / (c): quiet status with the watcher vs git status | {ratio('a', 'c', 'wall')} "
        f"| {ratio('a', 'c', 'cpu')} |",
        f"| (a) / (c0): the same vs git status without untracked cache | "
        f"{ratio('a', 'c0', 'wall')} | {ratio('a', 'c0', 'cpu')} |",
        f"| (b) / (c): status without a watcher vs git status | {ratio('b', 'c', 'wall')} | "
        f"{ratio('b', 'c', 'cpu')} |",
        f"| (a) / (b): what the watcher saves a status | {ratio('a', 'b', 'wall')} | "
        f"{ratio('a', 'b', 'cpu')} |",
        f"| **(f) / (c1): status after one edit with the watcher vs git status** | "
        f"{ratio('f', 'c1', 'wall')} | {ratio('f', 'c1', 'cpu')} |",
        f"| (f0) / (c1): the same, run by the program (no command server) | "
        f"{ratio('f0', 'c1', 'wall')} | {ratio('f0', 'c1', 'cpu')} |",
        f"| **(a), (f): the command with the watcher, against fsmonitor's 30 ms** | "
        f"{ms(med(m['a'].wall))}, {ms(med(m['f'].wall))} | {ms(med(m['a'].cpu))}, "
        f"{ms(med(m['f'].cpu))} |",
        f"| (a) / (p), (f) / (p): against Python's own start | {ratio('a', 'p', 'wall')}, "
        f"{ratio('f', 'p', 'wall')} | {ratio('a', 'p', 'cpu')}, {ratio('f', 'p', 'cpu')} |",
        f"| **(ac), (fc): the compiled client, against fsmonitor's 30 ms** | "
        f"{ms(med(m['ac'].wall))}, {ms(med(m['fc'].wall))} | {ms(med(m['ac'].cpu))}, "
        f"{ms(med(m['fc'].cpu))} |",
        f"| (fc) / (c1): the compiled client after one edit vs git status | "
        f"{ratio('fc', 'c1', 'wall')} | {ratio('fc', 'c1', 'cpu')} |",
        f"| (ac) / (p): the compiled client against Python's start | {ratio('ac', 'p', 'wall')} "
        f"| {ratio('ac', 'p', 'cpu')} |",
        f"| (b1) / (c1): the same without a watcher | {ratio('b1', 'c1', 'wall')} | "
        f"{ratio('b1', 'c1', 'cpu')} |",
        f"| (g) status after one edit in process (no Python start-up) | {ms(med(m['g'].wall))} "
        f"| {ms(med(m['g'].cpu))} |",
        f"| (d) quiet status in process (no Python start-up) | {ms(med(m['d'].wall))} | "
        f"{ms(med(m['d'].cpu))} |",
        f"| (e) tick proxy `begin()` in process | {ms(med(m['e'].wall))} | {ms(med(m['e'].cpu))} |",
        f"| watcher RSS (`rss_kib`): quiet / after the first burst / after the last | "
        f"{burst['rss_quiet_kib'] / mib:.1f} / {rss[0] / mib:.1f} / {rss[-1] / mib:.1f} MiB "
        f"(journal {queued[0]:,} / {queued[-1]:,} entries: ~{per_path:.0f} B each; peak "
        f"{burst['hwm_kib'] / mib:.1f} MiB) | |",
        f"| watcher CPU for a burst of {BURST_FILES:,} file creations in a new folder "
        f"({runs} bursts; ~{events:,} events each, {overflows} overflows) | | "
        f"{spread(burst['create_cpu'])} |",
        f"| watcher CPU for deleting them again | | {spread(burst['delete_cpu'])} |",
        "",
        "(a) and (f) are answered by the watcher's command server (`manifest.server`): the "
        "program (`manifest.client`) hands its descriptors, folder and environment to the "
        "watcher, which forks a child that runs the status with the engine already imported; "
        "their CPU is the program's plus the watcher's for that command (`/proc/PID/stat`, "
        "its reaped children included, 10 ms ticks summed over many runs, shared equally "
        "among the served commands). (ac) and (fc) are the same with the compiled client "
        "(`manifest build-client`, built for this run: `manifest/native_client.c`), which "
        "does the program's part without starting Python. Each served command runs after "
        "one the watcher does not serve ((a0), (f0) or (p)), as a prompt's status comes "
        "after a pause. Every round checks that the "
        f"watcher served all {4 * REPEAT} of them; (a0) and (f0) are the same commands with "
        "`MANIFEST_SERVER=0`.",
        "",
        "(c) has `core.untrackedCache=true` and `gc.auto=0` in its own git dir; (c0) is the same "
        "index without the untracked cache (`GIT_INDEX_FILE`, `-c core.untrackedCache=false`), "
        "as `bench/run.py`'s git peer runs (it sets no `core.*` option). Git 2.39 has no "
        "built-in fsmonitor on Linux, so no git row uses a watcher. The bursts: Python "
        f"`write_bytes` of {BURST_FILES:,} small files (CREATE, MODIFY, CLOSE_WRITE each), then "
        "`watch --status`, which answers after handling every queued event; CPU from "
        "`/proc/PID/stat` (10 ms ticks); then the folder is deleted, and after the last burst "
        "a snapshot is taken and a status checks the tree is back to base. A burst can count "
        f"fewer than {3 * BURST_FILES + 1:,} events: files created before the new folder's "
        "watch is added are found by listing the folder instead. The journal keeps one entry "
        "per event, not per path (a created file is ~3: CREATE, MODIFY, CLOSE_WRITE), until "
        "it holds `MAX_JOURNAL` = 1,000,000 entries (~330,000 file creations) and starts "
        "again (the next scan walks); nothing trims it after a clean scan, so the RSS after "
        "the last burst is what that many kept entries cost.",
        "",
        "One edit: a line appended to `" + gen_tree.rel_path(n // 2) + "`, restored "
        "(bytes and mtime) after (g), and again for (b1) and (c1). (f) is checked to "
        "come from the journal and to have listed 3 folders (the root, the file's two "
        "folders) and kept every other folder's base tree; (b1) to have walked; (c1) to "
        "show exactly that file modified.",
        "",
        f"<!-- watch:N={n} end -->",
    ]
    return "\n".join(lines) + "\n"


_WATCH_RE = re.compile(r"<!-- watch:N=(\d+) start.*?-->.*?<!-- watch:N=\1 end -->\n?", re.DOTALL)
_BENCH_END_RE = re.compile(r"<!-- bench:N=\d+ end -->\n?")


def write_doc(n: int, text: str) -> None:
    """Replace this N's section, or add it among the other watch sections (by N), else right
    after bench/run.py's last section (run.py keeps what follows its sections)."""
    doc = DOC.read_text()  # read right before writing: other sections may have changed
    found = {int(x.group(1)): x for x in _WATCH_RE.finditer(doc)}
    if n in found:
        x = found[n]
        doc = doc[: x.start()] + text + doc[x.end() :]
    else:
        later = [x for k, x in sorted(found.items()) if k > n]
        earlier = [x for k, x in sorted(found.items()) if k < n]
        ends = list(_BENCH_END_RE.finditer(doc))
        if later:
            at, text = later[0].start(), text + "\n"
        elif earlier:
            at, text = earlier[-1].end(), "\n" + text
        elif ends:
            at, text = ends[-1].end(), "\n" + text
        else:
            at, text = len(doc), "\n" + text
        doc = doc[:at] + text + doc[at:]
    DOC.write_text(doc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    if args.runs < 1 or args.n < 1:
        parser.error("N and --runs must be >= 1")
    load_before = uptime()
    print(f"uptime before: {load_before}", flush=True)
    TREES.mkdir(parents=True, exist_ok=True)
    tree = TREES / f"t{args.n}"
    shutil.rmtree(tree / BURST_DIR, ignore_errors=True)  # left by an interrupted run
    t0 = time.perf_counter()
    digest, made = gen_tree.generate(args.n, tree)
    print(f"tree {tree}: {'generated' if made else 'kept'} ({time.perf_counter() - t0:.1f}s)")
    harness.byte_compile(None)  # as bench/run.py: pip-installed code is byte-compiled
    work = TREES / f"watch{args.n}"
    work.mkdir(exist_ok=True)
    store = Path(tempfile.mkdtemp(prefix="store-", dir=work))
    b = Bench(args.n, tree, store, work / "git")
    try:
        b.setup_git(work / "git")
        from manifest.native import build

        print(f"  the compiled client: {build(Path(b.fast))}", flush=True)
        print("  first snapshot", flush=True)
        run_proc(b.manifest("snapshot", "--ref", "last", "-m", "base"), b.env)
        m, extra = measure_rounds(b, args.runs)
        burst = measure_bursts(b, args.runs)
    finally:
        try:
            b.stop_watcher()
        finally:
            shutil.rmtree(tree / BURST_DIR, ignore_errors=True)
            shutil.rmtree(store, ignore_errors=True)
    load_after = uptime()
    print(f"uptime after: {load_after}")
    text = section(args.n, args.runs, digest, m, extra, burst, (load_before, load_after))
    print("\n" + text)
    if not args.no_doc:
        write_doc(args.n, text)
        print(f"wrote the watch:N={args.n} section of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
