"""moto's standalone server, with S3's compare-and-swap made atomic as S3's is.

moto checks ``If-Match`` / ``If-None-Match`` and then writes, with nothing between the two
(``moto/s3/responses.py``, ``put_object``): two threads can both pass the check, and the
second write silently replaces the first, which real S3 never allows. The racing-writers
tests caught it (a ref move that "won" and left no reflog line). Here every S3 write (PUT and
DELETE, and a POST carrying a precondition) runs alone; reads and SQS (POST) do not wait.

Run: ``python tests/motoserver.py HOST PORT [PID]``: with a PID, the server exits when that
process is gone (the test session that shares it among its xdist workers).
"""

from __future__ import annotations

import os
import sys
import threading
import time
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


def exit_with(pid: int) -> None:
    """End this process soon after process ``pid`` ends."""

    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass  # alive, another user's (cannot happen for our parent session)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()


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
    if len(sys.argv) > 3:
        exit_with(int(sys.argv[3]))
    main(sys.argv[1], int(sys.argv[2]))
