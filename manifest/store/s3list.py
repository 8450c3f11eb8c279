"""A plain S3 ListObjectsV2, for the one case the listing library refuses: a bucket that holds
a key which is not a path it accepts (``a//b``, ``./x``, ``x/../y``). The library then
fails the whole listing; this lists every key as it is (URL-encoded on the wire, so any
byte survives XML), and the scan reports such keys as problems and leaves them out.

Signed with AWS Signature Version 4 from the environment's credentials
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``); the endpoint is
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` (path-style) or AWS's (virtual-hosted).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any
from xml.etree import ElementTree

from manifest.location import BucketURL
from manifest.store.s3 import s3_endpoint

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class NoCredentials(Exception):
    """The environment has no S3 credentials this listing can sign with."""


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="-_.~")


def _sign(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def decode_key(text: str) -> str:
    """A key as ``encoding-type=url`` sends it: S3 writes a space as ``+`` and ``+`` as
    ``%2B`` (botocore decodes with ``unquote_plus`` too); undecodable bytes stay escaped
    as surrogates, as file names are."""
    return urllib.parse.unquote_plus(text, errors="surrogateescape")


def _fetch(request: urllib.request.Request, attempts: int = 3) -> bytes:
    """The response body; a server error or a dropped connection is tried again."""
    import time
    import urllib.error

    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == attempts - 1:
                raise
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            if attempt == attempts - 1:
                raise
        time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def list_keys(url: BucketURL, env: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Every key below ``url`` as the listing library shows them (``path`` relative to the
    prefix, ``size``, ``last_modified``, ``e_tag``), whatever its name."""
    env = os.environ if env is None else env
    access, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        raise NoCredentials
    token = env.get("AWS_SESSION_TOKEN")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    endpoint, _http = s3_endpoint(env)
    if endpoint:
        parts = urllib.parse.urlsplit(endpoint)
        host, base = parts.netloc, f"{parts.scheme}://{parts.netloc}"
        path = f"{parts.path.rstrip('/')}/{_quote(url.bucket)}"
    elif "." in url.bucket:  # a dotted name breaks the wildcard certificate: path-style
        host = f"s3.{region}.amazonaws.com"
        base, path = f"https://{host}", f"/{_quote(url.bucket)}"
    else:
        host = f"{url.bucket}.s3.{region}.amazonaws.com"
        base, path = f"https://{host}", "/"
    prefix = f"{url.prefix}/" if url.prefix else ""
    token_param: str | None = None
    while True:
        query = {"list-type": "2", "encoding-type": "url", "prefix": prefix}
        if token_param:
            query["continuation-token"] = token_param
        canonical_query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))
        now = datetime.datetime.now(datetime.UTC)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        headers = {"host": host, "x-amz-content-sha256": _EMPTY_SHA256, "x-amz-date": stamp}
        if token:
            headers["x-amz-security-token"] = token
        signed = ";".join(sorted(headers))
        canonical = "\n".join(
            [
                "GET",
                path,
                canonical_query,
                "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
                signed,
                _EMPTY_SHA256,
            ]
        )
        scope = f"{day}/{region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = _sign(
            _sign(_sign(_sign(f"AWS4{secret}".encode(), day), region), "s3"), "aws4_request"
        )
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        request = urllib.request.Request(f"{base}{path}?{canonical_query}")
        for name, value in headers.items():
            if name != "host":
                request.add_header(name, value)
        request.add_header(
            "Authorization",
            f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={signed}, "
            f"Signature={signature}",
        )
        root = ElementTree.fromstring(_fetch(request))
        for item in root.iter(f"{_NS}Contents"):
            name = decode_key(item.findtext(f"{_NS}Key") or "")
            modified = item.findtext(f"{_NS}LastModified") or ""
            yield {
                "path": name[len(prefix) :],
                "size": int(item.findtext(f"{_NS}Size") or 0),
                "last_modified": datetime.datetime.fromisoformat(modified.replace("Z", "+00:00")),
                "e_tag": item.findtext(f"{_NS}ETag"),
            }
        if (root.findtext(f"{_NS}IsTruncated") or "").lower() != "true":
            return
        token_param = root.findtext(f"{_NS}NextContinuationToken")
        if not token_param:
            return
