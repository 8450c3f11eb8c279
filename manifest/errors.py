"""Every error the engine raises on purpose.

Each subclass of :class:`ManifestError` carries structured fields and builds a message that
says what happened and what to do. Faces map them to exit codes through ``exit_code``:
3 for a manifest error, 4 for a retryable one (a lock held, a compare-and-swap lost).
"""

from __future__ import annotations

from collections.abc import Iterable

EXIT_MANIFEST_ERROR = 3
EXIT_RETRYABLE = 4


class ManifestError(Exception):
    """Base of every expected engine error."""

    exit_code: int = EXIT_MANIFEST_ERROR
    retryable: bool = False


class ConfigError(ManifestError):
    """A configuration value is invalid."""

    def __init__(self, variable: str, value: object, allowed: str) -> None:
        self.variable = variable
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {variable}={value!r}: expected {allowed}")


class BuildError(ManifestError):
    """The compiled client (``manifest build-client``) cannot be built."""

    def __init__(self, problem: str, hint: str) -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(f"cannot build the compiled client: {problem}; {hint}")


class RootError(ManifestError):
    """The data root is missing or is not a directory."""

    def __init__(self, root: str, problem: str) -> None:
        self.root = root
        self.problem = problem
        super().__init__(
            f"data root {root} {problem}; set RAW_DATA_DIR (or --root) to the raw data folder"
        )


class StoreError(ManifestError):
    """The state store cannot be created, read or written."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"state store {path}: {problem}; check RAW_STATE_DIR (or --store) and its permissions"
        )


class FormatVersionError(ManifestError):
    """The store or an object was written by an incompatible version."""

    def __init__(self, what: str, found: object, supported: int) -> None:
        self.what = what
        self.found = found
        self.supported = supported
        super().__init__(
            f"{what} has format version {found}, this manifest reads version {supported}; "
            "upgrade manifest, or point RAW_STATE_DIR at a new store"
        )


class CorruptObjectError(ManifestError):
    """An object's bytes do not hash to its name, or do not decode."""

    def __init__(self, object_id: str, detail: str) -> None:
        self.object_id = object_id
        self.detail = detail
        super().__init__(
            f"corrupt object {object_id}: {detail}; run `manifest fsck` to list every damaged "
            "object, then `manifest reset` refs away from snapshots that use it"
        )


class ObjectNotFoundError(ManifestError):
    """An object that something refers to is not in the store."""

    def __init__(self, object_id: str, wanted_by: str = "") -> None:
        self.object_id = object_id
        self.wanted_by = wanted_by
        by = f" (referenced by {wanted_by})" if wanted_by else ""
        super().__init__(f"object {object_id} is missing from the store{by}; run `manifest fsck`")


class UnknownRevisionError(ManifestError):
    """A revision names nothing."""

    def __init__(self, revision: str, detail: str = "") -> None:
        self.revision = revision
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"unknown revision {revision!r}{extra}; use a snapshot id, a unique id prefix "
            "(4+ hex digits), a ref name such as 'last', or REF@{n} (see `manifest log`)"
        )


class UnsetRefError(UnknownRevisionError):
    """A revision names a ref that exists but holds nothing (``last`` before a baseline)."""

    def __init__(self, ref: str) -> None:
        self.revision = ref
        self.ref = ref
        hint = (
            "no baseline has been recorded yet: the first Dagster tick, or "
            "`manifest snapshot --ref last`, records one"
            if ref == "last"
            else f"nothing is {ref} now (see `manifest log {ref}`)"
        )
        ManifestError.__init__(self, f"{ref} is unset: {hint}")


class AmbiguousRevisionError(ManifestError):
    """An id prefix matches more than one snapshot."""

    def __init__(self, revision: str, candidates: Iterable[str]) -> None:
        self.revision = revision
        self.candidates = tuple(sorted(candidates))
        shown = ", ".join(c[:12] for c in self.candidates[:5])
        super().__init__(
            f"revision {revision!r} is ambiguous: it prefixes {len(self.candidates)} snapshots "
            f"({shown}); give more digits"
        )


class InvalidRefNameError(ManifestError):
    """A ref name would be unsafe as a path or is malformed."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(
            f"invalid ref name {name!r}: {reason}; use letters, digits, '.', '_', '-' "
            "and '/' between components"
        )


class DanglingRefError(ManifestError):
    """A ref points at a snapshot that is not in the store, or holds garbage."""

    def __init__(self, name: str, value: str, detail: str) -> None:
        self.name = name
        self.value = value
        super().__init__(
            f"ref {name} points at {value!r}, {detail}; move it with "
            f"`manifest reset {name} <revision>` (see `manifest log {name}`)"
        )


class LockHeldError(ManifestError):
    """Another process holds a lock (or a crashed one left it behind)."""

    exit_code = EXIT_RETRYABLE
    retryable = True

    def __init__(self, lock_path: str, age_seconds: float | None) -> None:
        self.lock_path = lock_path
        self.age_seconds = age_seconds
        age = f" (created {age_seconds:.0f}s ago)" if age_seconds is not None else ""
        super().__init__(
            f"{lock_path} exists{age}: another manifest process or Dagster tick is updating "
            "it; retry shortly. If no such process is running, the lock is stale: remove it"
        )


class RefConflictError(ManifestError):
    """A compare-and-swap on a ref lost: the ref no longer holds the expected value."""

    exit_code = EXIT_RETRYABLE
    retryable = True

    def __init__(self, name: str, expected: str | None, actual: str | None) -> None:
        self.name = name
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"ref {name} changed underneath us: expected {expected or '(unset)'}, found "
            f"{actual or '(unset)'}; another process moved it. Re-read it and retry"
        )


class StoreBusyError(ManifestError):
    """gc and writers exclude each other; the other side holds the store."""

    exit_code = EXIT_RETRYABLE
    retryable = True

    def __init__(self, lock_path: str, wanted_exclusive: bool) -> None:
        self.lock_path = lock_path
        if wanted_exclusive:
            what = "a snapshot or ref move is in progress, so gc cannot run now"
        else:
            what = "gc is running, so nothing can be written now"
        super().__init__(f"store busy ({lock_path}): {what}; retry shortly")


class StaleLockError(ManifestError):
    """A lock whose process is gone (on this host): retrying never clears it."""

    def __init__(self, lock_path: str, pid: int, host: str) -> None:
        self.lock_path = lock_path
        self.pid = pid
        self.host = host
        super().__init__(
            f"{lock_path} is a stale lock: process {pid} on {host} that took it is gone "
            f"(it crashed); remove it with: rm '{lock_path}'"
        )


class NoStoreError(ManifestError):
    """No store where one was looked for (commands that read need one)."""

    def __init__(self, store: str, searched: Iterable[str], source: str) -> None:
        self.store = store
        self.searched = tuple(searched)
        if self.searched:
            where = ", ".join(self.searched)
            detail = f"no manifest store found (searched {where}, then the default {store})"
        else:
            detail = f"no manifest store at {store} (from {source})"
        super().__init__(
            f"{detail}; run `manifest init` in your project folder (or `manifest -C DIR ...`), "
            "or point --store / RAW_STATE_DIR at an existing store"
        )


class UnknownRefError(ManifestError):
    """A ref that does not exist (and never did), where one is required."""

    def __init__(self, name: str, suggestions: Iterable[str], hint: str = "") -> None:
        self.name = name
        self.suggestions = tuple(suggestions)
        close = (
            f" (did you mean {' or '.join(repr(s) for s in self.suggestions)}?)"
            if self.suggestions
            else ""
        )
        super().__init__(f"no ref named {name!r}{close}{hint}")


class ProtectedRefError(ManifestError):
    """Deleting last or pending needs --force."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"{name} drives the processing cycle; deleting it needs --force "
            f"(to reprocess, roll it back instead: manifest reset {name} {name}@{{1}})"
        )


class SettingsMismatchError(ManifestError):
    """A caller's setting disagrees with the one its store records (``config.toml``): one
    store has one root, one mode and one set of filters."""

    def __init__(
        self, setting: str, given: object, given_by: str, recorded: object, where: str
    ) -> None:
        self.setting = setting
        self.given = given
        self.given_by = given_by
        self.recorded = recorded
        self.where = where
        super().__init__(
            f"{setting}: {given_by} gives {given!r} but the store records {recorded!r} (in "
            f"{where}); a store has one {setting} for every reader. Drop {given_by} to use "
            f"the store's, or change the store's with `manifest --store STORE init --force "
            f"...` (the next scan then reports what the new setting adds or leaves out)"
        )


class AmbiguousStoreError(ManifestError):
    """Several Dagster stores under ``$DAGSTER_HOME/state`` and none was named."""

    def __init__(self, folder: str, names: Iterable[str]) -> None:
        self.folder = folder
        self.names = tuple(names)
        super().__init__(
            f"{folder} holds several stores ({', '.join(self.names)}); pick one with "
            f"--name NAME (the `name` given to change_detection) or --store PATH"
        )
