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

import ipaddress
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Final
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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def s3_endpoint(env: Mapping[str, str]) -> tuple[str | None, bool]:
    """The custom endpoint from the environment and whether plain http is allowed for it."""
    for variable in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        endpoint = env.get(variable, "").strip()
        if not endpoint:
            continue
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(variable, endpoint, "an endpoint URL such as https://host:port")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ConfigError(
                variable,
                endpoint,
                "an https:// endpoint (plain http is allowed only for a loopback address)",
            )
        return endpoint, parts.scheme == "http"
    return None, False


# Fail in seconds, not minutes, when a bucket is unreachable (the library's default retries
# for three minutes); a tick retries on the next schedule anyway.
RETRY: Final[dict[str, Any]] = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}


def open_bucket(url: BucketURL, env: Mapping[str, str] | None = None) -> Any:
    """An obstore store rooted at ``url`` (its prefix applied to every key)."""
    from obstore.store import AzureStore, GCSStore, S3Store  # only for bucket URLs

    env = os.environ if env is None else env
    prefix = url.prefix or None
    if url.scheme == "s3":
        endpoint, http = s3_endpoint(env)
        kwargs: dict[str, Any] = {}
        if endpoint:
            kwargs["endpoint"] = endpoint
        if not (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")):
            kwargs["region"] = "us-east-1"
        provider = None
        if env.get("AWS_PROFILE") and not env.get("AWS_ACCESS_KEY_ID"):
            provider = _boto3_provider()
        return S3Store(
            url.bucket,
            prefix=prefix,
            client_options={"allow_http": http} if http else None,
            retry_config=RETRY,  # type: ignore[arg-type]
            credential_provider=provider,
            **kwargs,
        )
    if url.scheme == "gs":
        return GCSStore(url.bucket, prefix=prefix, retry_config=RETRY)  # type: ignore[arg-type]
    return AzureStore(url.bucket, prefix=prefix, retry_config=RETRY)  # type: ignore[arg-type]


def _boto3_provider() -> Any:
    """Credentials of ``AWS_PROFILE`` (the library reads environment and instance roles
    itself, but not profiles): through boto3's chain when boto3 is installed."""
    try:
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None
    return Boto3CredentialProvider()
