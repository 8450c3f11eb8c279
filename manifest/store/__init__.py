"""The state store: objects, refs with their reflogs, small files, locks and the format
marker, behind one interface (:class:`Store`) with two implementations, chosen once by
:func:`open_store` from the store's location:

* a local folder: :class:`manifest.store.local.LocalStore`;
* a bucket URL (``s3://bucket/prefix``): :class:`manifest.store.bucket.BucketStore`.

Nothing outside this package (and ``manifest.root``) knows which one it holds: what differs
and matters to a caller is data (:class:`Capabilities`), not a type to test. To add a third
backend (``gs://`` with its own client, an in-memory store for fast tests), implement
``Objects``, ``Refs``/``RefTransaction`` (only ``_commit``: the compare-and-swap is shared)
and ``Files``, subclass :class:`Store`, choose it in :func:`open_store`, and add it to the
parameters of ``tests/store/test_conformance.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from manifest.store.base import FORMAT_FILE, STORE_LOCK, Capabilities, Files, Store

if TYPE_CHECKING:
    from manifest.location import Location


def cache_dir_of(location: Location) -> Path:
    """The folder on this machine a store at ``location`` keeps its stat cache and locks in."""
    from manifest.location import BucketURL

    if isinstance(location, BucketURL):
        from manifest.store.bucket import bucket_cache_dir

        return bucket_cache_dir(location)
    return Path(location).resolve()


def open_store(location: Location, *, sync: bool = True, lock_timeout: float = 5.0) -> Store:
    """The store at ``location``: a local folder or a bucket URL. The one place that
    chooses."""
    from manifest.location import BucketURL

    if isinstance(location, BucketURL):
        from manifest.store.bucket import BucketStore

        return BucketStore(location, lock_timeout=lock_timeout)
    from manifest.store.local import LocalStore

    return LocalStore(location, sync=sync, lock_timeout=lock_timeout)


__all__ = [
    "FORMAT_FILE",
    "STORE_LOCK",
    "Capabilities",
    "Files",
    "Store",
    "cache_dir_of",
    "open_store",
]
