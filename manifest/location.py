"""Where a data root or a state store lives: a local folder or a bucket URL.

``s3://bucket/prefix`` is tested end to end (against a real S3 API server started by the
tests). ``gs://`` and ``az://`` go through the same library (obstore) with the provider's own
credential chain and are accepted, not tested here. ``file:///path`` is a local folder.

Credentials are never read, printed or stored by manifest: the library takes them from the
provider's standard chain (environment variables, web identity / instance role; an
``AWS_PROFILE`` through boto3 when it is installed). A custom S3 endpoint (MinIO, a local test
server) comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``; plain ``http://`` is
allowed only for a loopback endpoint.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

import msgspec

from manifest.errors import ConfigError

BUCKET_SCHEMES: Final = ("s3", "gs", "az")
ALLOWED: Final = (
    "a local folder, or a bucket URL s3://bucket/prefix (gs://, az:// and file:// are "
    "also accepted)"
)
_URL_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)", re.DOTALL)


class BucketURL(msgspec.Struct, frozen=True):
    """``scheme://bucket/prefix``; ``prefix`` has no leading or trailing slash."""

    scheme: str
    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")

    def contains(self, other: BucketURL) -> bool:
        """``other`` is this location or below it."""
        if (self.scheme, self.bucket) != (other.scheme, other.bucket):
            return False
        return (
            not self.prefix
            or other.prefix == self.prefix
            or (other.prefix.startswith(self.prefix + "/"))
        )


def parse_location(text: str, what: str) -> Path | BucketURL:
    """A bucket URL, or the local path ``text`` names (``file://`` stripped; not resolved).

    ``what`` names the setting in errors (``--root``, ``RAW_STATE_DIR``, ...)."""
    match = _URL_RE.fullmatch(text.strip())
    if match is None:
        return Path(text)
    scheme = match["scheme"].lower()
    if scheme == "file":
        parts = urlsplit(text.strip())
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(what, text, "a file:// URL of this machine (file:///path)")
        return Path(unquote(parts.path))
    if scheme not in BUCKET_SCHEMES:
        raise ConfigError(what, text, f"{ALLOWED}; scheme {scheme!r} is not supported")
    bucket, _, prefix = match["rest"].partition("/")
    if not bucket:
        raise ConfigError(what, text, f"{scheme}://BUCKET/prefix: the bucket name is missing")
    prefix = prefix.strip("/")
    parts_ = prefix.split("/") if prefix else []
    if any(p in ("", ".", "..") for p in parts_):
        raise ConfigError(what, text, "a prefix without empty, '.' or '..' components")
    return BucketURL(scheme, bucket, prefix)


Location = Path | BucketURL
"""Where a root or a store is: a local folder (absolute) or a bucket URL."""


def absolute_location(text: str, what: str, cwd: Path) -> Location:
    """``parse_location``, with a folder made absolute (from ``cwd``, ``~`` expanded,
    symlinks resolved)."""
    where = parse_location(text, what)
    if isinstance(where, BucketURL):
        return where
    return Path(os.path.realpath(cwd / os.path.expanduser(where)))
