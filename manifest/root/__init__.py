"""The data root: the tree of raw files a store records, behind one interface (:class:`Root`)
with two implementations, chosen once by :func:`open_root` from the root's location:

* a local folder: :class:`manifest.root.local.LocalRoot`, the walk (``scan``), its worker
  processes (``pool``) and the stat cache (``index``);
* a bucket URL: :class:`manifest.root.bucket.BucketRoot`, one listing is the stat of every
  file, the hash cache kept in the store.

A root scans against a base snapshot's trees and returns a
:class:`manifest.scanresult.ScanResult`; it reads a file's bytes and lists its files (for the
Dagster assets that read them) and describes itself. To add a third kind, subclass
:class:`Root`, choose it in :func:`open_root` and add it to the parameters of
``tests/root/test_conformance.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from manifest.root.base import Root

if TYPE_CHECKING:
    from manifest.config import Config
    from manifest.location import Location
    from manifest.store import Store


def open_root(
    location: Location, settings: Config | None = None, store: Store | None = None
) -> Root:
    """The root at ``location``: a local folder or a bucket URL. The one place that
    chooses. Scanning needs the ``settings`` and the ``store``; reading files does not."""
    from manifest.location import BucketURL

    if isinstance(location, BucketURL):
        from manifest.root.bucket import BucketRoot

        return BucketRoot(location, settings, store)
    from manifest.root.local import LocalRoot

    return LocalRoot(location, settings, store)


__all__ = ["Root", "open_root"]
