"""``ManifestResource``: one watched root's settings, shared by the schedule, the sensors and
the user's own assets. Every field may be a ``dg.EnvVar``; nothing here reads ``RAW_*``."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from dagster_glue import tags as T
from manifest import Repository, TreeEntry, load_config
from manifest.config import DEFAULT_COOLDOWN_SEC, DEFAULT_LOCK_TIMEOUT_SEC
from manifest.errors import ConfigError
from manifest.globs import compile_globs
from manifest.location import absolute_location
from manifest.root import Root, open_root
from manifest.text import escape_path, unescape_path

SOURCE_PATH = "source_path"
MISSING_VERSION = "missing"
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def validate_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ConfigError("name", name, "letters, digits and '_', not starting with a digit")
    return name


def resource_key(name: str) -> str:
    """The resource key a watched root's ``ManifestResource`` is bound to: ``{name}_manifest``."""
    return f"{name}_manifest"


def observation_version(entry: TreeEntry | None) -> str:
    """The data version of a raw file: its manifest fingerprint, or ``missing``."""
    return entry.fingerprint if entry is not None else MISSING_VERSION


class ManifestResource(dg.ConfigurableResource):
    """Where a watched root and its state store are, and how to scan and process it."""

    root: str = Field(description="The raw data folder to watch.")
    state_dir: str | None = Field(
        default=None, description="The state store; default $DAGSTER_HOME/state/<name>."
    )
    name: str = Field(default="raw", description="Prefix of jobs, schedules, tags, run keys.")
    asset_mode: str = Field(default="materialize", description="materialize or observe.")
    hash_mode: str | None = Field(
        default=None,
        description="content_hash, mtime_size or etag; default: the store's, else content_hash.",
    )
    cooldown_sec: float = Field(
        default=DEFAULT_COOLDOWN_SEC, description="Files modified more recently wait a tick."
    )
    include: list[str] | None = Field(
        default=None, description="Globs of files to record; default: the store's, else all."
    )
    exclude: list[str] | None = Field(
        default=None, description="Globs of files to ignore; default: the store's, else none."
    )
    bootstrap: str = Field(default="baseline", description="First tick: baseline or all.")
    batch_size: int = Field(default=50, description="Raw assets per run.")
    max_attempts: int = Field(default=3, description="Runs per batch before giving up.")
    run_grace_sec: float = Field(
        default=300.0, description="How long another instigator waits for a requested run."
    )
    lock_timeout_sec: float = Field(default=DEFAULT_LOCK_TIMEOUT_SEC)

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
        process environment."""
        config = load_config(
            root=self.root,
            store=self.store_location(),
            mode=self.hash_mode,
            cooldown_sec=self.cooldown_sec,
            include=tuple(self.include) if self.include is not None else None,
            exclude=tuple(self.exclude) if self.exclude is not None else None,
            bootstrap=self.bootstrap,
            env={},
            origin=f"change_detection(name={self.name!r})",
        )
        return Repository(config, lock_timeout=self.lock_timeout_sec)

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
