from __future__ import annotations

from manifest.reconcile import Decision, RunInfo, reconcile

S, F, P = "success", "failure", "in_progress"


def decide(
    runs: dict[int, list[tuple[str, str]]],
    n: int = 1,
    *,
    age: float = 10,
    changed: bool = False,
    max_attempts: int = 3,
    after: dict[int, tuple[int, ...]] | None = None,
    owner: bool = False,
) -> Decision:
    return reconcile(
        n,
        {b: [RunInfo(i, s) for i, s in rs] for b, rs in runs.items()},  # type: ignore[arg-type]
        pending_age_sec=age,
        grace_sec=300,
        max_attempts=max_attempts,
        tree_changed=lambda: changed,
        after=after,
        owner=owner,
    )


def test_all_batches_succeeded_promotes() -> None:
    d = decide({1: [("r1", F), ("r2", S)], 2: [("r3", S)]}, n=2)
    assert d.action == "promote" and d.runs == ("r2", "r3")  # the runs that succeeded


def test_running_batch_waits_and_names_the_run() -> None:
    d = decide({1: [("r1", S)], 2: [("r2", P)]}, n=2, changed=True)
    assert d.action == "wait" and "r2" in d.message


def test_missing_run_waits_within_grace_then_is_requested() -> None:
    assert decide({}, age=10).action == "wait"
    late = decide({}, age=301)
    assert late.action == "request" and late.batches == (1,) and late.attempt == 1


def test_a_later_tick_of_the_owner_requests_a_missing_batch_at_once() -> None:
    """A preview (or a crash) took pending without launching: the next real tick of the same
    schedule finds no run and requests it at once, not after the grace period."""
    d = decide({}, age=10, owner=True)
    assert d.action == "request" and d.batches == (1,) and d.attempt == 1


def test_failed_batch_waits_for_the_owner_or_the_grace_period() -> None:
    waiting = decide({1: [("r1", F)]}, age=10)
    assert waiting.action == "wait" and waiting.retry_in_sec == 290
    assert decide({1: [("r1", F)]}, age=301).action == "request"


def test_dependent_batch_is_requested_only_after_its_prerequisites_succeed() -> None:
    after = {3: (1, 2)}
    d = decide({1: [("r1", S)], 2: [("r2", P)]}, n=3, after=after, owner=True)
    assert d.action == "wait" and "r2" in d.message
    d = decide({1: [("r1", S)], 2: [("r2", F)]}, n=3, after=after, owner=True)
    assert d.action == "request" and d.batches == (2,)
    d = decide({1: [("r1", S)], 2: [("r2", F), ("r3", S)]}, n=3, after=after, owner=True)
    assert d.action == "request" and d.batches == (3,) and d.attempt == 1
    d = decide({1: [("r1", S)], 2: [("r2", F), ("r3", S)], 3: [("r4", S)]}, n=3, after=after)
    assert d.action == "promote" and d.runs == ("r1", "r3", "r4")


def test_only_failed_batches_are_requested_again() -> None:
    d = decide({1: [("r1", S)], 2: [("r2", F)], 3: [("r3", S)]}, n=3, owner=True)
    assert d.action == "request" and d.batches == (2,) and d.attempt == 2


def test_newer_edit_supersedes_a_failed_pending() -> None:
    assert decide({1: [("r1", F)]}, changed=True).action == "abandon"


def test_retry_limit_gives_up_naming_the_runs() -> None:
    d = decide({1: [("r1", F), ("r2", F), ("r3", F)]}, max_attempts=3, owner=True)
    assert d.action == "give_up"
    assert "r1, r2, r3" in d.message and "manifest reset" in d.message


def test_tree_is_not_rescanned_while_a_run_is_in_flight() -> None:
    calls = []
    reconcile(
        1,
        {1: [RunInfo("r", "in_progress")]},
        pending_age_sec=0,
        grace_sec=1,
        max_attempts=3,
        tree_changed=lambda: calls.append(1) or True,
    )
    assert calls == []
