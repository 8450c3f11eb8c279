"""The bucket client the bucket store and the bucket root share: one bucket prefix and the
few requests they need (through obstore), and how to reach it (endpoint, credentials).

Credentials are never read, printed or stored by manifest: the library takes them from the
provider's standard chain (environment variables, web identity / instance role; an
``AWS_PROFILE`` through boto3 when it is installed). A custom S3 endpoint (MinIO, a local test
server) comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``; plain ``http://`` is
allowed only for a loopback endpoint.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any, Final
from urllib.parse import urlsplit

from manifest.errors import ConfigError, RootError, StoreError
from manifest.location import BucketURL

LIST_CHUNK: Final = 1000


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


def describe(exc: BaseException) -> str:
    """A short reason for a failed bucket request (the library's message names the URL and
    the status, never a credential)."""
    text = str(exc)
    if "NoSuchBucket" in text:
        return "the bucket does not exist (create it, or fix the URL)"
    name = type(exc).__name__
    if name in ("PermissionDeniedError", "UnauthenticatedError") or " 403 " in text:
        return (
            "access denied: check the credentials (environment, profile or instance role) "
            "and the bucket policy"
        )
    first = text.strip().splitlines()[0] if text.strip() else name
    return first[:300]


def invalid_key(exc: BaseException | None) -> str | None:
    """The key named by the listing library's refusal of a key that is not a path it accepts
    (``a//b``, ``./x``), or None for any other error."""
    import re

    while exc is not None:
        if type(exc).__name__ == "InvalidPathError":
            found = re.search(r'parsing Path "(.*?)"', str(exc), re.DOTALL)
            return found.group(1) if found else ""
        exc = exc.__cause__
    return None


def _errors() -> Any:
    import obstore.exceptions

    return obstore.exceptions


class Bucket:
    """One bucket prefix, with the few requests the store and the scanner need."""

    def __init__(self, url: BucketURL, env: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.store = open_bucket(url, env)
        import obstore

        self.obs = obstore

    def name(self, key: str) -> str:
        return f"{self.url}/{key}"

    def get(self, key: str) -> tuple[bytes, str | None] | None:
        """The object's bytes and ETag, or None when it does not exist."""
        try:
            result = self.obs.get(self.store, key)
            data = bytes(result.bytes())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StoreError(self.name(key), f"cannot read: {describe(exc)}") from exc
        return data, result.meta.get("e_tag")

    def exists(self, key: str) -> bool:
        try:
            self.obs.head(self.store, key)
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise StoreError(self.name(key), f"cannot read: {describe(exc)}") from exc
        return True

    def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist; False if it did."""
        return self.replace(key, data, None)

    def replace(self, key: str, data: bytes, etag: str | None) -> bool:
        """Compare-and-swap: write ``key`` if it still has ``etag`` (None: if it does not
        exist). False when another writer got there first."""
        errors = _errors()
        mode: Any = "create" if etag is None else {"e_tag": etag}
        try:
            self.obs.put(self.store, key, data, mode=mode)
        except (errors.AlreadyExistsError, errors.PreconditionError):
            return False
        except FileNotFoundError:  # If-Match on a key deleted meanwhile
            return False
        except Exception as exc:
            raise StoreError(self.name(key), f"cannot write: {describe(exc)}") from exc
        return True

    def put(self, key: str, data: bytes) -> None:
        try:
            self.obs.put(self.store, key, data)
        except Exception as exc:
            raise StoreError(self.name(key), f"cannot write: {describe(exc)}") from exc

    def delete(self, key: str) -> None:
        try:
            self.obs.delete(self.store, key)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise StoreError(self.name(key), f"cannot delete: {describe(exc)}") from exc

    def iter_keys(self, prefix: str | None = None) -> Iterator[Any]:
        """Every object below ``prefix`` (path, size, last_modified, e_tag), paginated."""
        try:
            for chunk in self.obs.list(self.store, prefix, chunk_size=LIST_CHUNK):
                yield from chunk
        except Exception as exc:
            raise StoreError(self.name(prefix or ""), f"cannot list: {describe(exc)}") from exc

    def list_dirs(self, prefix: str | None = None) -> tuple[list[str], list[Any]]:
        """One level: the common prefixes (folders) and the objects directly below."""
        try:
            result = self.obs.list_with_delimiter(self.store, prefix)
        except Exception as exc:
            raise StoreError(self.name(prefix or ""), f"cannot list: {describe(exc)}") from exc
        return list(result["common_prefixes"]), list(result["objects"])

    def check(self, as_root: bool = False) -> None:
        """Raise a clear error unless the bucket exists and can be listed."""
        try:
            next(iter(self.obs.list(self.store, None, chunk_size=1)), None)
        except Exception as exc:
            if invalid_key(exc) is not None:
                return  # it lists; one key is not a path the library accepts (the scan says)
            if as_root:
                raise RootError(str(self.url), f"cannot be listed: {describe(exc)}") from exc
            raise StoreError(str(self.url), f"cannot be listed: {describe(exc)}") from exc
