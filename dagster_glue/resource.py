"""``ManifestResource``: one watched root's settings, shared by the schedule, the sensors and
the user's own assets, and the one place those settings are declared: ``change_detection``
and ``ChangeDetectionComponent`` take exactly its fields. Each field says its type, default,
description and, in its ``Setting``, the environment variable the bundled sample (and the CLI,
for the engine's settings) reads it from, how text becomes its value, and when a
``dg.EnvVar`` given for it is read. Nothing here reads ``RAW_*``."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import dagster as dg
from pydantic import Field, ValidationInfo, field_validator
from pydantic.fields import FieldInfo

from dagster_glue import tags as T
from manifest import Repository, TreeEntry, load_config
from manifest.config import (
    BOOTSTRAPS,
    DEFAULT_BOOTSTRAP,
    DEFAULT_COOLDOWN_SEC,
    DEFAULT_LOCK_TIMEOUT_SEC,
    ENV_BOOTSTRAP,
    ENV_COOLDOWN,
    ENV_DATA_DIR,
    ENV_EVENTS_QUEUE,
    ENV_EXCLUDE,
    ENV_HASH_MODE,
    ENV_INCLUDE,
    ENV_LOCK_TIMEOUT,
    ENV_STATE_DIR,
    HASH_MODES,
    StoreFile,
    find_store_file,
    parse_seconds,
)
from manifest.errors import ConfigError
from manifest.globs import compile_globs
from manifest.location import Location, absolute_location
from manifest.root import Root, open_root
from manifest.root.events import parse_queue_url
from manifest.text import escape_path, unescape_path

SOURCE_PATH = "source_path"
MISSING_VERSION = "missing"
ASSET_MODES = ("materialize", "observe")
TRIGGERS = ("schedule", "sensor")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def validate_name(name: str) -> str:
    return parse_name(name, "name")


def resource_key(name: str) -> str:
    """The resource key a watched root's ``ManifestResource`` is bound to: ``{name}_manifest``."""
    return f"{name}_manifest"


def observation_version(entry: TreeEntry | None) -> str:
    """The data version of a raw file: its manifest fingerprint, or ``missing``."""
    return entry.fingerprint if entry is not None else MISSING_VERSION


# -- how text (an environment variable, a dg.EnvVar, YAML) becomes a setting's value ----------


def parse_cron(value: Any, variable: str) -> str:
    """A 5-field cron expression (a ``dg.EnvVar`` is read now), or a ``ConfigError``."""
    text = str(_read_now(value) or "").strip()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg.ScheduleDefinition(name="_check", cron_schedule=text, target="*")
    except Exception as exc:  # Dagster raises its own error types for a bad cron string
        raise ConfigError(
            variable, text, "a 5-field cron expression such as '*/5 * * * *'"
        ) from exc
    return text


def parse_name(value: Any, variable: str) -> str:
    text = str(value)
    if not _NAME_RE.fullmatch(text):
        raise ConfigError(variable, text, "letters, digits and '_', not starting with a digit")
    return text


def parse_count(value: Any, variable: str) -> int:
    """A whole number >= 1."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(variable, value, "a whole number >= 1") from None
    if number < 1:
        raise ConfigError(variable, value, "a whole number >= 1")
    return number


def parse_flag(value: Any, variable: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(variable, value, "true or false")
    return text in ("true", "1", "yes")


def parse_globs(value: Any, variable: str) -> list[str]:
    """A list of globs, or text holding them separated by commas or newlines."""
    if isinstance(value, str):
        return [p.strip() for p in value.replace("\n", ",").split(",") if p.strip()]
    if isinstance(value, Sequence) and all(isinstance(p, str) for p in value):
        return list(value)
    raise ConfigError(variable, value, "a list of globs, or globs separated by commas")


def _read_now(value: Any) -> Any:
    return value.get_value() if isinstance(value, dg.EnvVar) else value


@dataclasses.dataclass(frozen=True)
class Setting:
    """What ``ManifestResource`` says of a field beyond its type, default and description.

    ``env_var``: the variable the bundled sample reads it from (for the engine's settings the
    same one the CLI reads; the library itself reads none). ``parse``: text or a value to the
    field's type, raising a ``ConfigError`` that names the variable. ``choices``: the values
    allowed. ``read_at_use``: a ``dg.EnvVar`` given to ``change_detection`` is read whenever
    the resource is used (else once, when the definitions load)."""

    env_var: str | None = None
    parse: Callable[[Any, str], Any] | None = None
    choices: tuple[str, ...] = ()
    read_at_use: bool = False

    def read(self, value: Any, variable: str) -> Any:
        """``value`` as the field holds it."""
        if self.choices and value not in self.choices:
            raise ConfigError(variable, value, " or ".join(self.choices))
        return self.parse(value, variable) if self.parse is not None else value


def setting_of(field: FieldInfo) -> Setting:
    """The ``Setting`` a field of ``ManifestResource`` carries."""
    return next((m for m in field.metadata if isinstance(m, Setting)), Setting())


class ManifestResource(dg.ConfigurableResource):
    """Where a watched root and its state store are, and how to scan and process it."""

    root: Annotated[str, Setting(ENV_DATA_DIR, read_at_use=True)] = Field(
        description="The folder to watch, or a bucket URL (`s3://bucket/prefix`). A relative "
        "path is resolved against the current folder of the process that loads the "
        "definitions (`dagster dev`'s, the daemon's): prefer an absolute path or a "
        "`dg.EnvVar`."
    )
    state_dir: Annotated[str | None, Setting(ENV_STATE_DIR, read_at_use=True)] = Field(
        default=None,
        description="The manifest store (refs, snapshots, stat cache): a folder or a bucket "
        "URL. None: `$DAGSTER_HOME/state/<name>`, where the CLI finds it too (`manifest --name "
        "<name> status`, or plain `manifest status` when it is the only one).",
    )
    name: Annotated[str, Setting(parse=parse_name)] = Field(
        default="raw",
        description="Prefix of every job, schedule, sensor, tag and run key; one per root.",
    )
    asset_mode: Annotated[str, Setting("RAW_ASSET_MODE", choices=ASSET_MODES)] = Field(
        default="materialize",
        description="`materialize`: the watched assets are materialized with their "
        "downstream; `observe`: they are observable sources, and are observed.",
    )
    selection: Annotated[str | None, Setting()] = Field(
        default=None,
        description="Narrows the watched assets: a selection string such as `group:raw` "
        "(sources included). From Python also an `AssetSelection` (build it with "
        "`include_sources=True` to reach observable sources; the resource holds Dagster's "
        "text for it). None: all assets.",
    )
    cron: Annotated[str, Setting("RAW_SCAN_CRON", parse=parse_cron)] = Field(
        default="*/5 * * * *",
        description="When `<name>_schedule` ticks: reconcile the run in flight, else scan, "
        "diff and request.",
    )
    trigger: Annotated[str, Setting("RAW_TRIGGER", choices=TRIGGERS)] = Field(
        default="schedule",
        description="`schedule`: `<name>_schedule` evaluates on `cron`; `sensor`: "
        "`<name>_sensor` evaluates every `minimum_interval_seconds` instead (a run starts "
        "seconds after a file lands; with `manifest watch` running, a quiet evaluation walks "
        "nothing).",
    )
    minimum_interval_seconds: Annotated[
        int, Setting("RAW_SENSOR_INTERVAL_SEC", parse=parse_count)
    ] = Field(
        default=10,
        description="With `trigger: sensor`: the least time between two evaluations of "
        "`<name>_sensor`.",
    )
    full_hash_cron: Annotated[str, Setting("RAW_FULL_HASH_CRON", parse=parse_cron)] = Field(
        default="30 2 * * *",
        description="When `<name>_full_hash_check` ticks: the same, re-hashing every file.",
    )
    enabled: Annotated[bool, Setting("RAW_SCHEDULE_ENABLED", parse=parse_flag)] = Field(
        default=False,
        description="Whether the schedules (and the sensor) start running (else switch them "
        "on in the UI).",
    )
    hash_mode: Annotated[
        str | None, Setting(ENV_HASH_MODE, choices=HASH_MODES, read_at_use=True)
    ] = Field(
        default=None,
        description="`content_hash` (BLAKE3, re-hashing only what changed stat), `mtime_size`, "
        "or `etag` (bucket roots). None: the store's, else `content_hash`.",
    )
    cooldown_sec: Annotated[float, Setting(ENV_COOLDOWN, parse=parse_seconds)] = Field(
        default=DEFAULT_COOLDOWN_SEC,
        description="A file modified more recently than this waits for a later tick.",
    )
    include: Annotated[list[str] | None, Setting(ENV_INCLUDE, parse=parse_globs)] = Field(
        default=None,
        description="Globs of the files the store records (as text: separated by commas or "
        "newlines). None: the store's, else all files.",
    )
    exclude: Annotated[list[str] | None, Setting(ENV_EXCLUDE, parse=parse_globs)] = Field(
        default=None,
        description="Globs of the files the store leaves out. None: the store's, else none.",
    )
    batch_size: Annotated[int, Setting("RAW_BATCH_SIZE", parse=parse_count)] = Field(
        default=50, description="Unpartitioned raw assets per run."
    )
    max_attempts: Annotated[int, Setting("RAW_MAX_ATTEMPTS", parse=parse_count)] = Field(
        default=3, description="Runs per batch before the schedule stops retrying."
    )
    run_grace_sec: Annotated[float, Setting("RAW_RUN_GRACE_SEC", parse=parse_seconds)] = Field(
        default=300.0,
        description="How long anyone but the requesting schedule waits for a requested run.",
    )
    bootstrap: Annotated[str, Setting(ENV_BOOTSTRAP, choices=BOOTSTRAPS)] = Field(
        default=DEFAULT_BOOTSTRAP,
        description="The first tick, with no `last` yet: `baseline` records the files and "
        "runs nothing; `all` requests every file as added.",
    )
    lock_timeout_sec: Annotated[float, Setting(ENV_LOCK_TIMEOUT, parse=parse_seconds)] = Field(
        default=DEFAULT_LOCK_TIMEOUT_SEC,
        description="How long an update of the store waits for another holder of its lock "
        "before the tick skips, to retry on the next.",
    )
    events_queue: Annotated[
        str | None, Setting(ENV_EVENTS_QUEUE, parse=parse_queue_url, read_at_use=True)
    ] = Field(
        default=None,
        description="For an `s3://` root: the SQS queue URL its S3 event notifications go "
        "to; a tick then re-reads only the keys the events name and a quiet tick lists "
        "nothing (docs/operations.md, Bucket events; needs `raw-manifest[events]`). None: the "
        "store's, else every tick lists the bucket.",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _read_setting(cls, value: Any, info: ValidationInfo) -> Any:
        """Every value passes its ``Setting``: the factory, the Component and a resource
        built by hand check alike. A ``dg.EnvVar`` is checked when Dagster resolves it."""
        assert info.field_name is not None
        field = cls.model_fields[info.field_name]
        if isinstance(value, dg.EnvVar) or (value is None and field.default is None):
            return value
        return setting_of(field).read(value, info.field_name)

    @classmethod
    def settings_from_env(cls, env: Mapping[str, str]) -> dict[str, Any]:
        """The settings ``env`` sets through the variables the fields declare (a blank
        variable is unset), read and checked: keyword arguments for ``change_detection``. A
        bad value is a ``ConfigError`` naming its variable."""
        out = {}
        for name, field in cls.model_fields.items():
            setting = setting_of(field)
            text = env.get(setting.env_var, "").strip() if setting.env_var else ""
            if text:
                out[name] = setting.read(text, setting.env_var or name)
        return out

    # -- the engine ----------------------------------------------------------------------

    def store_location(self) -> str:
        """The state store: ``state_dir`` (a folder or a bucket URL), else
        ``$DAGSTER_HOME/state/<name>``."""
        if self.state_dir:
            return self.state_dir
        home = os.environ.get("DAGSTER_HOME", "").strip()
        if not home:
            raise ConfigError(
                "state_dir", None, "a folder (DAGSTER_HOME is unset, so there is no default)"
            )
        return str(Path(home) / "state" / self.name)

    def store_path(self) -> Path:
        """The state store's local folder (for a bucket store: this machine's cache)."""
        return self.repository().config.store

    def repository(self) -> Repository:
        """The engine for this root. Settings come from these fields and the store's own
        record of its root, mode and filters (a field that disagrees with the record is an
        error naming both); credentials and a custom endpoint for a bucket come from the
        process environment.

        Built once per process and thread for these settings, working directory and
        environment, and again only when the store's record (``config.toml``) changes, as
        ``manifest init --force`` or a new store makes it: a tick, the helpers its runs call
        and the promotion sensor share one. (One per thread: Dagster evaluates schedules and
        sensors on a thread pool, and a ``Repository`` keeps per-instance state.)"""
        arguments: dict[str, Any] = {
            "root": self.root,
            "store": self.store_location(),
            "mode": self.hash_mode,
            "cooldown_sec": self.cooldown_sec,
            "include": tuple(self.include) if self.include is not None else None,
            "exclude": tuple(self.exclude) if self.exclude is not None else None,
            "bootstrap": self.bootstrap,
            "events_queue": self.events_queue,
            "origin": f"change_detection(name={self.name!r})",
        }
        key = (
            os.getpid(),
            os.getcwd(),
            tuple(arguments.items()),
            self.lock_timeout_sec,
            tuple(sorted(os.environ.items())),  # DAGSTER_HOME, credentials, cache folder
        )
        built: dict[tuple[Any, ...], _Built] = _BUILT.__dict__.setdefault("repositories", {})
        found = built.pop(key, None)
        if found is None or found.record != find_store_file(found.where):
            where = found.where if found is not None else _record_where(arguments["store"])
            # The record is read before load_config reads it: one written in between is
            # seen (and built with) by the next call, never missed.
            record = find_store_file(where)
            config = load_config(**arguments, env={})
            if config.store_location != where:  # not where it was looked for
                where = config.store_location
                record = find_store_file(where)
            found = _Built(Repository(config, lock_timeout=self.lock_timeout_sec), where, record)
        built[key] = found  # the most recently used last
        while len(built) > _MAX_BUILT:
            del built[next(iter(built))]
        return found.repository

    def _root(self) -> Root:
        """The root, opened to read and list files."""
        return open_root(absolute_location(self.root, "root", Path.cwd()))

    def root_location(self) -> str:
        """The root as text: a local folder's absolute path, or its bucket URL."""
        return self._root().text

    def location(self, rel_path: str) -> str:
        """Where a file under the root is (``rel_path`` as in ``source_path``), as text."""
        return self._root().location_of(rel_path)

    def root_path(self) -> Path:
        """The root folder. A root on a bucket has none: use ``read_bytes``/``location``."""
        root = self._root()
        if root.local_path is None:
            raise ConfigError(
                "root",
                root.text,
                "a local folder for root_path()/path(); this root is on a bucket, so read "
                "its files with read_bytes(rel_path) or read_text(rel_path)",
            )
        return root.local_path

    def path(self, rel_path: str) -> Path:
        """The absolute path of a file under a local root (``rel_path`` as in
        ``source_path``)."""
        return self.root_path() / rel_path

    def read_bytes(self, rel_path: str) -> bytes:
        """A file's bytes under the root, local or on a bucket."""
        return self._root().read_bytes(rel_path)

    def read_text(self, rel_path: str, encoding: str = "utf-8") -> str:
        return self.read_bytes(rel_path).decode(encoding)

    def list_files(self, prefix: str = "") -> list[str]:
        """Relative paths of the files under ``prefix`` (a folder under the root), sorted."""
        return self._root().list_files(prefix)

    # -- helpers for the user's raw assets -----------------------------------------------

    def source_file(self, context: dg.AssetExecutionContext) -> str:
        """The relative path of the file the current asset (or partition) reads: the asset's
        ``source_path``, or for a per-file partition the file its partition key names."""
        if context.has_partition_key:
            return unescape_path(context.partition_key)
        return _declared_source(context)

    def source_metadata(self, context: dg.AssetExecutionContext) -> dict[str, Any]:
        """Metadata for a raw asset's materialization: the source file (relative and as a
        location) and, when the run came from the schedule, the change kind and the old and
        new fingerprint. An asset declared by a glob gets the glob and a table of its
        changed files (path, change, old and new fingerprint). Keys never collide with an
        IO manager's ``path``."""
        declared = _declared_source(context)
        rel = self.source_file(context)
        single = context.has_partition_key or not _is_glob(declared)
        meta: dict[str, Any] = {
            SOURCE_PATH: dg.MetadataValue.text(escape_path(rel if single else declared)),
            "source_file": dg.MetadataValue.path(self.location(rel if single else declared)),
        }
        pending = T.snapshot_of(self.name, context.run.tags)
        if not pending:
            return meta
        repo = self.repository()
        last = T.last_of(self.name, context.run.tags)
        changes = repo.pending_changes(pending, last)
        meta["snapshot"] = dg.MetadataValue.text(pending)
        if single:
            old = repo.find_file(last, rel) if last else None
            new = repo.find_file(pending, rel)
            meta["change"] = dg.MetadataValue.text(changes.kind(rel))
            meta["fingerprint_old"] = dg.MetadataValue.text(observation_version(old))
            meta["fingerprint_new"] = dg.MetadataValue.text(observation_version(new))
            return meta
        matches = compile_globs([declared], SOURCE_PATH)
        changed = [p for p in changes.paths if matches is not None and matches.match(p)]
        rows = []
        for path in changed[: T.MAX_LISTED]:
            old = repo.find_file(last, path) if last else None
            new = repo.find_file(pending, path)
            rows.append(
                dg.TableRecord(
                    {
                        "path": escape_path(path),
                        "change": changes.kind(path),
                        "fingerprint_old": observation_version(old),
                        "fingerprint_new": observation_version(new),
                    }
                )
            )
        meta["changed_files"] = dg.MetadataValue.table(
            rows,
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn(name, "string")
                    for name in ("path", "change", "fingerprint_old", "fingerprint_new")
                ]
            ),
        )
        meta["changed_count"] = dg.MetadataValue.int(len(changed))
        return meta

    def observe(self, context: dg.AssetExecutionContext) -> Iterator[dg.ObserveResult]:
        """Observations for the selected observable raw assets: each file's fingerprint in the
        snapshot the run processes (tag), or in a fresh snapshot for a run launched by hand."""
        repo = self.repository()
        snapshot = T.snapshot_of(self.name, context.run.tags)
        if not snapshot:
            snapshot, _ = repo.snapshot(message=f"observation run {context.run_id}")
        last = T.last_of(self.name, context.run.tags)
        changes = repo.pending_changes(snapshot, last) if last else None
        for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
            rel = str(context.assets_def.specs_by_key[key].metadata[SOURCE_PATH])
            entry = repo.find_file(snapshot, rel)
            version = observation_version(entry)
            old = repo.find_file(last, rel) if last else None
            yield dg.ObserveResult(
                asset_key=key,
                data_version=dg.DataVersion(version),
                metadata={
                    SOURCE_PATH: dg.MetadataValue.text(escape_path(rel)),
                    "source_file": dg.MetadataValue.path(self.location(rel)),
                    "change": dg.MetadataValue.text(
                        changes.kind(rel) if changes is not None else "observed by hand"
                    ),
                    "fingerprint_old": dg.MetadataValue.text(observation_version(old)),
                    "fingerprint_new": dg.MetadataValue.text(version),
                    "size": dg.MetadataValue.int(entry.size if entry is not None else 0),
                },
            )


def _declared_source(context: dg.AssetExecutionContext) -> str:
    metadata: Mapping[str, Any] = context.assets_def.specs_by_key[context.asset_key].metadata
    value = metadata.get(SOURCE_PATH)
    if value is None:
        raise ConfigError(
            f"{context.asset_key.to_user_string()} metadata",
            None,
            f"a '{SOURCE_PATH}' entry naming the file (or glob) under the root",
        )
    return str(getattr(value, "value", value))


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


# -- the Repository each process (and thread) builds once ----------------------------------

_MAX_BUILT = 16  # settings this thread keeps a Repository for (a process watches a few roots)
_BUILT = threading.local()


@dataclasses.dataclass(frozen=True)
class _Built:
    repository: Repository
    where: Location  # the store whose record it was built with
    record: StoreFile | None  # that record (config.toml), None when it had none


def _record_where(store: str) -> Location:
    """Where ``load_config`` reads the record of the store ``store`` names (a folder
    resolved against the working directory, or a bucket URL)."""
    return absolute_location(store, "state_dir", Path.cwd())
