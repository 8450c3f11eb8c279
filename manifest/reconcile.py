"""What to do with an in-flight ``pending`` snapshot, given the runs that process it.

A pure function of plain data, so the orchestrator face stays thin: the Dagster glue looks up
its runs by tag, reduces each to ``in_progress``/``success``/``failure``, and acts on the
``Decision``. ``pending`` is split into batches (numbered from 1); each batch may have had
several attempts (runs), oldest first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import msgspec

RunState = Literal["in_progress", "success", "failure"]
Action = Literal["promote", "wait", "request", "give_up", "abandon"]


class RunInfo(msgspec.Struct, frozen=True):
    run_id: str
    state: RunState


class Decision(msgspec.Struct, frozen=True):
    """``request``: run ``batches`` again as ``attempt``. ``promote``: every batch succeeded
    (``runs`` are the successful runs). ``abandon``: the tree changed since ``pending`` was
    taken and nothing is running, begin afresh. ``wait``/``give_up``: skip, with ``message``."""

    action: Action
    message: str
    batches: tuple[int, ...] = ()
    attempt: int = 1
    runs: tuple[str, ...] = ()
    # ``wait`` for another evaluator: seconds until anyone may request the batches itself
    retry_in_sec: float | None = None


def reconcile(
    n_batches: int,
    runs_by_batch: Mapping[int, Sequence[RunInfo]],
    *,
    pending_age_sec: float,
    grace_sec: float,
    max_attempts: int,
    tree_changed: Callable[[], bool],
    after: Mapping[int, Sequence[int]] | None = None,
    owner: bool = False,
) -> Decision:
    """Decide what to do with ``pending``.

    ``after[b]`` lists the batches that must succeed before batch ``b`` is requested (it was
    not requested with the others). ``owner`` is True when this is a later tick of the
    schedule that took ``pending``: that schedule's runs for an earlier tick exist by now
    (the daemon creates a tick's runs before it evaluates the next), so a batch with no run
    was never launched (a preview, a crash) and is requested at once. Anyone else waits
    ``grace_sec`` before requesting, in case the owner is not ticking.
    """
    after = after or {}
    batches = range(1, n_batches + 1)
    latest = {b: runs_by_batch[b][-1] for b in batches if runs_by_batch.get(b)}
    if len(latest) == n_batches and all(r.state == "success" for r in latest.values()):
        return Decision(
            "promote",
            "every batch succeeded",
            runs=tuple(r.run_id for b in batches for r in runs_by_batch[b] if r.state == "success"),
        )
    done = {b for b, r in latest.items() if r.state == "success"}
    running = [r.run_id for r in latest.values() if r.state == "in_progress"]
    failed = [b for b in batches if b in latest and latest[b].state == "failure"]
    unrun = [b for b in batches if b not in latest]
    ready = [b for b in unrun if all(d in done for d in after.get(b, ()))]
    blocked = [b for b in unrun if b not in ready]
    may_request = owner or pending_age_sec >= grace_sec
    if not failed and not ready:
        if running:
            return Decision(
                "wait",
                f"run {', '.join(running)} is still queued or running",
                runs=tuple(running),
            )
        # only blocked batches left, yet nothing runs: their prerequisites failed before
        return Decision("wait", f"batch {', '.join(map(str, blocked))} waits for earlier batches")
    if not running and tree_changed():
        return Decision("abandon", "the raw tree changed again since pending was taken")
    if not may_request:
        waiting = sorted(failed + ready)
        return Decision(
            "wait",
            f"batch {', '.join(map(str, waiting))} has no successful run yet; the schedule "
            f"that requested it asks again on its next tick (anyone else after {grace_sec:g}s)",
            retry_in_sec=max(grace_sec - pending_age_sec, 0.0),
        )
    failures = {
        b: [r.run_id for r in runs_by_batch.get(b, ()) if r.state == "failure"] for b in failed
    }
    worst = max((len(v) for v in failures.values()), default=0)
    if worst >= max_attempts:
        gave_up = [b for b in failed if len(failures[b]) >= max_attempts]
        failed_runs = [run for b in gave_up for run in failures[b]]  # attempt order
        if running:
            return Decision(
                "wait", f"run {', '.join(running)} is still queued or running", runs=tuple(running)
            )
        return Decision(
            "give_up",
            f"stopped retrying batch {', '.join(map(str, gave_up))} after {worst} failed "
            f"attempts (runs {', '.join(failed_runs)}, oldest first); fix the cause and edit "
            "the data, or roll back with `manifest reset`",
            batches=tuple(gave_up),
            runs=tuple(failed_runs),
        )
    to_request = tuple(sorted(failed + ready))
    attempt = 1 + max(len(runs_by_batch.get(b, ())) for b in to_request)
    return Decision(
        "request",
        f"requesting batch {', '.join(map(str, to_request))} (attempt {attempt})",
        batches=to_request,
        attempt=attempt,
    )
