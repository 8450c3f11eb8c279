"""moto's standalone server, with S3's compare-and-swap made atomic as S3's is.

moto checks ``If-Match`` / ``If-None-Match`` and then writes, with nothing between the two
(``moto/s3/responses.py``, ``put_object``): two threads can both pass the check, and the
second write silently replaces the first, which real S3 never allows. The racing-writers
tests caught it (a ref move that "won" and left no reflog line). Here every S3 write (PUT and
DELETE, and a POST carrying a precondition) runs alone; reads and SQS (POST) do not wait.

Run: ``python tests/motoserver.py HOST PORT``.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any


def serialize_writes(app: Any) -> Any:
    lock = threading.Lock()

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        method = environ.get("REQUEST_METHOD", "")
        conditional = "HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ
        if method in ("PUT", "DELETE") or (method == "POST" and conditional):
            with lock:
                # the whole response is made inside the lock (moto answers with a list)
                return list(app(environ, start_response))
        return app(environ, start_response)

    return guarded


def main(host: str, port: int) -> None:
    from moto.moto_server.threaded_moto_server import MotoRequestHandler
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(port))  # as moto.server does
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        host,
        port,
        serialize_writes(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
