"""Configuration: the environment knobs shared by the CLI and the Dagster schedule.

One rule resolves every setting, so the terminal and the daemon find the same store:
an explicit argument wins, then the environment variable, then the default.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from manifest.errors import ConfigError, StoreError
from manifest.location import BucketURL, Location, parse_location

HashMode = Literal["content_hash", "mtime_size", "etag"]
Bootstrap = Literal["baseline", "all"]

HASH_MODES: tuple[HashMode, ...] = ("content_hash", "mtime_size", "etag")
BOOTSTRAPS: tuple[Bootstrap, ...] = ("baseline", "all")

DEFAULT_DATA_DIR = "data/1_raw"
DEFAULT_STATE_SUBDIR = "state"
FALLBACK_STATE_DIR = ".manifest"
DEFAULT_HASH_MODE: HashMode = "content_hash"
DEFAULT_COOLDOWN_SEC = 3.0
DEFAULT_BOOTSTRAP: Bootstrap = "baseline"

ENV_DATA_DIR = "RAW_DATA_DIR"
ENV_STATE_DIR = "RAW_STATE_DIR"
ENV_HASH_MODE = "RAW_SCAN_HASH_MODE"
ENV_COOLDOWN = "RAW_SCAN_COOLDOWN_SEC"
ENV_INCLUDE = "RAW_SCAN_INCLUDE"
ENV_EXCLUDE = "RAW_SCAN_EXCLUDE"
ENV_BOOTSTRAP = "RAW_SCAN_BOOTSTRAP"
ENV_LOCK_TIMEOUT = "RAW_LOCK_TIMEOUT_SEC"
DEFAULT_LOCK_TIMEOUT_SEC = 5.0
# Processes that walk a big tree: a number, or "auto" (one per core for big trees)
ENV_JOBS = "MANIFEST_JOBS"
# A bucket root's S3 event notifications, delivered to this SQS queue (manifest.root.events)
ENV_EVENTS_QUEUE = "RAW_EVENTS_QUEUE"
# How long a tick waits on an empty queue (long polling) and holds the messages it received
ENV_EVENTS_WAIT = "MANIFEST_EVENTS_WAIT_SEC"
ENV_EVENTS_VISIBILITY = "MANIFEST_EVENTS_VISIBILITY_SEC"


class Config(msgspec.Struct, frozen=True):
    """Resolved settings. Paths are absolute.

    A root or store on a bucket is ``root_url``/``store_url``; then ``store`` is this
    machine's cache folder for that store (its stat cache, never its truth) and ``root`` is
    unused."""

    root: Path
    store: Path
    mode: HashMode = DEFAULT_HASH_MODE
    cooldown_sec: float = DEFAULT_COOLDOWN_SEC
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP
    lock_timeout_sec: float = DEFAULT_LOCK_TIMEOUT_SEC
    jobs: int | None = None  # scan processes; None: automatic (manifest.root.pool.choose_jobs)
    # how the store was chosen: --store, RAW_STATE_DIR, found (walking up), default
    store_source: str = "default"
    searched: tuple[Path, ...] = ()
    root_url: BucketURL | None = None
    store_url: BucketURL | None = None
    # the store records its settings (config.toml); else its first writer records these
    recorded: bool = False
    # where the root came from: an argument or variable (its name), the store, the default
    root_source: str = "default"
    # the SQS queue the bucket root's event notifications go to (None: list every tick)
    events_queue: str | None = None
    events_wait_sec: float = 1.0
    events_visibility_sec: int = 300

    @property
    def root_location(self) -> Location:
        """The root: its bucket URL, else its folder."""
        return self.root_url if self.root_url is not None else self.root

    @property
    def store_location(self) -> Location:
        """The store: its bucket URL, else its folder."""
        return self.store_url if self.store_url is not None else self.store

    @property
    def root_text(self) -> str:
        return str(self.root_url) if self.root_url is not None else str(self.root)

    @property
    def store_text(self) -> str:
        return str(self.store_url) if self.store_url is not None else str(self.store)


def _split_globs(text: str) -> tuple[str, ...]:
    """Globs are separated by commas or newlines; blanks are dropped."""
    parts = text.replace("\n", ",").split(",")
    return tuple(p.strip() for p in parts if p.strip())


def parse_hash_mode(value: str, variable: str = ENV_HASH_MODE) -> HashMode:
    if value not in HASH_MODES:
        raise ConfigError(variable, value, " or ".join(HASH_MODES))
    return value


def parse_bootstrap(value: str, variable: str = ENV_BOOTSTRAP) -> Bootstrap:
    if value not in BOOTSTRAPS:
        raise ConfigError(variable, value, " or ".join(BOOTSTRAPS))
    return value


def parse_seconds(value: str | float, variable: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(variable, value, "a number of seconds >= 0, e.g. 3") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(variable, value, "a number of seconds >= 0, e.g. 3")
    return seconds


def parse_jobs(value: str, variable: str = ENV_JOBS) -> int | None:
    """``MANIFEST_JOBS``: empty or ``auto`` (None), else a whole number of processes >= 1."""
    text = value.strip().lower()
    if text in ("", "auto"):
        return None
    try:
        jobs = int(text)
    except ValueError:
        raise ConfigError(variable, value, "a number of processes >= 1, or auto") from None
    if jobs < 1:
        raise ConfigError(variable, value, "a number of processes >= 1, or auto")
    return jobs


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(value: str, variable: str) -> float | None:
    """``90d``, ``12h``, ``30m``, ``45s``, a plain number of seconds, or ``never`` (None)."""
    text = value.strip().lower()
    if text == "never":
        return None
    unit = _UNITS.get(text[-1:]) if text[-1:].isalpha() else 1.0
    number = text[:-1] if text[-1:].isalpha() else text
    if unit is None:
        raise ConfigError(variable, value, "a duration such as 90d, 12h, 30m, 3600 or never")
    seconds = parse_seconds(number, variable) if number else -1.0
    if seconds < 0:
        raise ConfigError(variable, value, "a duration such as 90d, 12h, 30m, 3600 or never")
    return seconds * unit


DEFAULT_STORE_NAME = "raw"  # change_detection()'s default name


def _real(path: Path) -> Path:
    """The absolute path with symlinks resolved as far as they go (a symlink loop stays as
    it is, for the store to report, never a RuntimeError)."""
    return Path(os.path.realpath(path))


def dagster_store(env: Mapping[str, str], cwd: Path, name: str | None = None) -> Path | None:
    """The store the Dagster glue keeps under ``$DAGSTER_HOME/state`` (None without
    DAGSTER_HOME): ``state/<name>`` for ``name``; else the store kept at ``state`` itself
    (the bundled sample before 0.2), else the only ``state/<name>`` store there, else
    ``state/raw``. Several stores and no ``name``: an error listing them."""
    home = env.get("DAGSTER_HOME", "").strip()
    if not home:
        if name:
            raise ConfigError(
                "--name", name, "a DAGSTER_HOME to look under (DAGSTER_HOME is unset)"
            )
        return None
    state = _real(cwd / os.path.expanduser(home) / DEFAULT_STATE_SUBDIR)
    if name:
        if "/" in name or name in (".", "..") or not name.strip():
            raise ConfigError("--name", name, "the name given to change_detection, e.g. raw")
        return state / name
    if (state / "FORMAT").is_file():
        return state
    try:
        names = sorted(d.name for d in state.iterdir() if (d / "FORMAT").is_file())
    except OSError:
        names = []
    if len(names) > 1:
        from manifest.errors import AmbiguousStoreError

        raise AmbiguousStoreError(str(state), names)
    return state / (names[0] if names else DEFAULT_STORE_NAME)


def default_store(env: Mapping[str, str], cwd: Path, name: str | None = None) -> Path:
    """The Dagster glue's store under ``$DAGSTER_HOME/state`` (:func:`dagster_store`) when
    DAGSTER_HOME is set, else ``./.manifest``."""
    found = dagster_store(env, cwd, name)
    return found if found is not None else _real(cwd / FALLBACK_STATE_DIR)


CONFIG_FILE = "config.toml"


class StoreFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``<store>/config.toml``, written by ``manifest init``. ``root`` is relative to the
    folder that holds the store (absolute if it was given so)."""

    root: str | None = None
    mode: HashMode | None = None
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    events_queue: str | None = None


def find_store(start: Path) -> tuple[Path | None, tuple[Path, ...]]:
    """Walk up from ``start`` like git looks for ``.git``: the first ``<dir>/.manifest`` that
    holds a ``config.toml``. Returns it (or None) and every folder searched."""
    searched = []
    for folder in (start, *start.parents):
        candidate = folder / FALLBACK_STATE_DIR
        searched.append(candidate)
        if (candidate / CONFIG_FILE).is_file():
            return candidate, tuple(searched)
    return None, tuple(searched)


def find_store_file(store: Location) -> StoreFile | None:
    """The settings the store at ``store`` (a folder or a bucket URL) records in its
    ``config.toml``, or None when it records none."""
    from manifest.store import open_store

    files = open_store(store).files
    path = files.where(CONFIG_FILE)
    try:
        data = files.read(CONFIG_FILE)
    except StoreError as exc:
        raise ConfigError(path, exc.problem, "a readable file") from exc
    if data is None:
        return None  # no config file (or no store folder: the verbs say so)
    import tomllib  # only when a store has a config file

    try:
        return msgspec.convert(tomllib.loads(data.decode("utf-8")), StoreFile)
    except (
        tomllib.TOMLDecodeError,
        UnicodeDecodeError,
        msgspec.ValidationError,
        RecursionError,
    ) as exc:
        raise ConfigError(
            str(path),
            str(exc),
            "TOML with root, mode, include, exclude, events_queue (see `manifest init`)",
        ) from exc


def store_file_text(settings: StoreFile) -> bytes:
    """``config.toml``'s bytes (strings JSON-quoted, which TOML reads alike)."""
    lines = [
        "# This store's settings: every reader (the CLI, the Dagster glue) uses them, and a",
        "# setting given elsewhere that differs is an error. Change them with",
        "# `manifest --store <this store> init --force ...`.",
    ]
    if settings.root is not None:
        lines.append(
            f"root = {json.dumps(settings.root)}  # relative to the folder that holds the store"
        )
    if settings.mode is not None:
        lines.append(f"mode = {json.dumps(settings.mode)}")
    for key in ("include", "exclude"):
        values = getattr(settings, key)
        if values:
            lines.append(f"{key} = [{', '.join(json.dumps(v) for v in values)}]")
    if settings.events_queue is not None:
        lines.append(f"events_queue = {json.dumps(settings.events_queue)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def settings_of(config: Config) -> StoreFile:
    """What a store records of ``config``: the root (relative to the folder holding a local
    store when it lies below it, so the project can move; else absolute), mode, filters."""
    if config.root_url is not None or config.store_url is not None:
        root = config.root_text  # absolute: a bucket has no folder to be relative to
    elif config.root.is_relative_to(config.store.parent):
        root = os.path.relpath(config.root, config.store.parent)
    else:
        root = str(config.root)
    return StoreFile(
        root=root,
        mode=config.mode,
        include=config.include or None,
        exclude=config.exclude or None,
        events_queue=config.events_queue,
    )


def write_store_file(store: Path, settings: StoreFile) -> Path:
    """Write ``<store>/config.toml``."""
    from manifest.fsutil import atomic_write

    path = store / CONFIG_FILE
    atomic_write(path, store_file_text(settings))
    return path


def _normal_globs(values: tuple[str, ...] | None) -> tuple[str, ...]:
    return tuple(sorted(set(values or ())))


def load_config(
    *,
    root: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | None = None,
    mode: str | None = None,
    cooldown_sec: float | str | None = None,
    include: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] | None = None,
    bootstrap: str | None = None,
    events_queue: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    discover: bool = False,
    name: str | None = None,
    origin: str | None = None,
    ignore_recorded: bool = False,
) -> Config:
    """Resolve settings: explicit argument, then environment variable, then what the store
    records in its ``config.toml``, then the default.

    The store: ``store``, else ``RAW_STATE_DIR``, else (with ``discover``, as the CLI does) the
    first ``.manifest`` with a ``config.toml`` found walking up from ``cwd``, else the Dagster
    glue's store under ``$DAGSTER_HOME/state`` (``name`` picks one, see
    :func:`dagster_store`), else ``./.manifest``.

    A store records its root, mode, include and exclude (whoever creates it: ``init``, the
    first tick, ``snapshot``). A root, mode or filter given here (argument or environment)
    that differs from the recorded one is a :class:`SettingsMismatchError` naming both
    (``ignore_recorded``: not read, as ``init --force`` replaces them). ``origin`` names
    where the arguments came from in that message (default: the CLI's flags)."""
    from manifest.errors import SettingsMismatchError

    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd

    def given_by(setting: str) -> str:
        return f"{origin} {setting}" if origin else f"--{setting}"

    if root is not None and not str(root).strip():
        raise ConfigError(given_by("root"), "", "the raw data folder (an empty path is refused)")
    if store is not None and not str(store).strip():
        raise ConfigError("--store", "", "the state store folder (an empty path is refused)")
    store_text = str(store) if store is not None else env.get(ENV_STATE_DIR, "").strip()
    store_what = "--store" if store is not None else ENV_STATE_DIR
    searched: tuple[Path, ...] = ()
    found = None
    store_url: BucketURL | None = None
    if store_text:
        where = parse_location(store_text, store_what)
        if isinstance(where, BucketURL):
            from manifest.store import cache_dir_of

            store_url = where
            store_path = cache_dir_of(where)
        else:
            store_path = Path(os.path.realpath(cwd / os.path.expanduser(where)))
        store_source = store_what
    else:
        if discover and not name:
            found, searched = find_store(cwd.absolute())
        if found is not None:
            store_path, store_source = found, "found"
        else:
            dagster = dagster_store(env, cwd, name)
            store_path = dagster if dagster is not None else _real(cwd / FALLBACK_STATE_DIR)
            store_source = "--name" if name else "default"
    recorded = None if ignore_recorded else find_store_file(store_url or store_path)
    recorded_where = (
        f"{store_url}/{CONFIG_FILE}" if store_url is not None else str(store_path / CONFIG_FILE)
    )

    # -- the root: given, or recorded, or the default; given and recorded must agree -------
    given_root: Path | BucketURL | None = None
    root_by = ""
    if root is not None:
        given_root, root_by = parse_location(str(root), given_by("root")), given_by("root")
    elif env.get(ENV_DATA_DIR):
        given_root, root_by = parse_location(env[ENV_DATA_DIR], ENV_DATA_DIR), ENV_DATA_DIR
    recorded_root: Path | BucketURL | None = None
    if recorded is not None and recorded.root is not None:
        file_root = recorded.root
        recorded_root = parse_location(file_root, f"root in {recorded_where}")
        if isinstance(recorded_root, Path):
            recorded_root = Path(os.path.expanduser(recorded_root))
            if store_url is not None and not recorded_root.is_absolute():
                raise ConfigError(
                    f"root in {recorded_where}", file_root, "an absolute path or a URL"
                )
            recorded_root = Path(os.path.realpath(store_path.parent / recorded_root))
    if isinstance(given_root, Path):
        # Resolve symlinks in the folders above the root, not the root's own entries.
        given_root = Path(os.path.realpath((cwd / os.path.expanduser(given_root)).absolute()))
    if given_root is not None and recorded_root is not None and given_root != recorded_root:
        raise SettingsMismatchError(
            "root", str(given_root), root_by, str(recorded_root), recorded_where
        )
    root_where = given_root or recorded_root
    root_source = root_by if given_root is not None else "store" if recorded_root else "default"
    if root_where is None:
        root_where = Path(os.path.realpath((cwd / DEFAULT_DATA_DIR).absolute()))
    root_url: BucketURL | None = None
    if isinstance(root_where, BucketURL):
        root_url = root_where
        root_path = Path("/nonexistent-bucket-root")
        if store_url is not None and store_url.contains(root_url):
            raise ConfigError(
                store_what,
                str(store_url),
                f"a location that neither is nor contains the data root {root_url} (the "
                "store would scan itself); put it beside the root",
            )
    else:
        root_path = root_where
    if root_url is None and root_path == Path(root_path.anchor):
        raise ConfigError(
            root_by or "root",
            str(root_path),
            "a data folder, not the file system's root (that would scan the whole machine)",
        )
    if store_url is None and (store_path.parent / "FORMAT").is_file():
        raise ConfigError(
            store_what if store_text else "store",
            str(store_path),
            f"a folder outside another store ({store_path.parent} is a manifest store; run "
            "this from your project folder)",
        )
    if (
        root_url is None
        and store_url is None
        and (store_path == root_path or root_path.is_relative_to(store_path))
    ):
        raise ConfigError(
            "--store" if store is not None else ENV_STATE_DIR,
            str(store_path),
            f"a folder that neither is nor contains the data root {root_path} (the store "
            "would scan itself); put it beside the root, or inside it",
        )

    # -- the mode and the filters: the same rule ----------------------------------------
    mode_by = given_by("mode") if mode is not None else ENV_HASH_MODE
    mode_text = mode if mode is not None else (env.get(ENV_HASH_MODE) or None)
    hash_mode: HashMode
    if mode_text is not None:
        hash_mode = parse_hash_mode(mode_text, mode_by)
        if recorded is not None and recorded.mode is not None and recorded.mode != hash_mode:
            raise SettingsMismatchError("mode", hash_mode, mode_by, recorded.mode, recorded_where)
    elif recorded is not None and recorded.mode is not None:
        hash_mode = recorded.mode
    else:
        hash_mode = DEFAULT_HASH_MODE

    if hash_mode == "etag" and root_url is None:
        raise ConfigError(
            mode_by,
            "etag",
            "content_hash or mtime_size for a local root (etag reads a bucket's ETags: it "
            "needs an s3:// root)",
        )

    def globs(setting: str, value: tuple[str, ...] | None, variable: str) -> tuple[str, ...]:
        by = given_by(setting)
        if value is None and env.get(variable, "").strip():
            value, by = _split_globs(env[variable]), variable
        kept = None if recorded is None else getattr(recorded, setting)
        if value is None:
            return tuple(kept or ())
        if recorded is not None and _normal_globs(value) != _normal_globs(kept):
            raise SettingsMismatchError(setting, list(value), by, list(kept or ()), recorded_where)
        return tuple(value)

    inc = globs("include", include, ENV_INCLUDE)
    exc = globs("exclude", exclude, ENV_EXCLUDE)

    if cooldown_sec is not None:
        cooldown = parse_seconds(cooldown_sec, given_by("cooldown"))
    else:
        cooldown = parse_seconds(env.get(ENV_COOLDOWN) or DEFAULT_COOLDOWN_SEC, ENV_COOLDOWN)
    lock_timeout = parse_seconds(
        env.get(ENV_LOCK_TIMEOUT) or DEFAULT_LOCK_TIMEOUT_SEC, ENV_LOCK_TIMEOUT
    )

    if bootstrap is not None:
        boot = parse_bootstrap(bootstrap, given_by("bootstrap"))
    else:
        boot = parse_bootstrap(env.get(ENV_BOOTSTRAP) or DEFAULT_BOOTSTRAP)

    queue = _events_queue(
        events_queue,
        given_by("events_queue") if origin else "--events-queue",
        env,
        recorded,
        recorded_where,
        root_url,
    )

    return Config(
        events_queue=queue,
        events_wait_sec=parse_seconds(env.get(ENV_EVENTS_WAIT) or 1.0, ENV_EVENTS_WAIT),
        events_visibility_sec=round(
            parse_seconds(env.get(ENV_EVENTS_VISIBILITY) or 300, ENV_EVENTS_VISIBILITY)
        ),
        jobs=parse_jobs(env.get(ENV_JOBS, "")),
        root=root_path,
        store=store_path,
        mode=hash_mode,
        cooldown_sec=cooldown,
        include=inc,
        exclude=exc,
        bootstrap=boot,
        lock_timeout_sec=lock_timeout,
        store_source=store_source,
        searched=searched,
        root_url=root_url,
        store_url=store_url,
        recorded=recorded is not None,
        root_source=root_source,
    )


def _events_queue(
    given: str | None,
    given_by: str,
    env: Mapping[str, str],
    recorded: StoreFile | None,
    recorded_where: str,
    root_url: BucketURL | None,
) -> str | None:
    """The SQS queue of the bucket's events: given (argument, then ``RAW_EVENTS_QUEUE``),
    else the store's. Given and recorded must agree (one store, one queue: two would each
    delete the other's events). Unlike the filters, a store that records none takes one
    given: the queue changes what a tick costs, never what it finds."""
    from manifest.errors import SettingsMismatchError

    by = given_by
    text = given.strip() if given is not None else None
    if text is None and env.get(ENV_EVENTS_QUEUE, "").strip():
        text, by = env[ENV_EVENTS_QUEUE].strip(), ENV_EVENTS_QUEUE
    if text == "":
        text = None
    kept = recorded.events_queue if recorded is not None else None
    if text is not None:
        from manifest.root.events import parse_queue_url  # only when a queue is given

        text = parse_queue_url(text, by)
        if kept is not None and kept != text:
            raise SettingsMismatchError("events_queue", text, by, kept, recorded_where)
    queue = text if text is not None else kept
    if queue is not None and (root_url is None or root_url.scheme != "s3"):
        raise ConfigError(
            by if text is not None else f"events_queue in {recorded_where}",
            queue,
            "no queue for this root: S3 event notifications need an s3:// root (a local "
            "folder has `manifest watch`)",
        )
    return queue
