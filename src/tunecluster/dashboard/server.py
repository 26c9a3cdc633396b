"""Running the dashboard: in the foreground (``tunecluster dashboard``) or in a thread
beside an embedded run (``start_in_background``), on uvicorn."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from tunecluster.dashboard.auth import TOKEN_ENV, check_bind, is_loopback


def _config(redis_url: str, host: str, port: int, *, token: str | None, read_only: bool,
            open_metrics: bool) -> Any:
    import uvicorn

    from tunecluster.dashboard.app import create_app
    from tunecluster.security import check_redis_url
    from tunecluster.store import Store

    check_bind(host, token)
    check_redis_url(redis_url, "dashboard")  # example passwords; short ones where required
    Store.from_url(redis_url, retries=1).ping()  # unreachable: one line, at once
    hosts = (host,) if not is_loopback(host) and host not in ("0.0.0.0", "::") else ()
    app = create_app(redis_url, token=token, read_only=read_only,
                     open_metrics=open_metrics, hosts=hosts)
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                          lifespan="off", timeout_graceful_shutdown=2,
                          proxy_headers=False)


def serve(redis_url: str, host: str = "127.0.0.1", port: int = 8080, *,
          read_only: bool = False, open_metrics: bool = False,
          announce: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted (the token comes from ``$TUNECLUSTER_DASHBOARD_TOKEN``)."""
    import uvicorn

    token = os.environ.get(TOKEN_ENV)  # set but blank is refused (check_bind), not "none"
    check_bind(host, token)  # before the port probe below binds anything
    if port == 0:  # announce the port that will be served, not 0
        import socket

        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    config = _config(redis_url, host, port, token=token, read_only=read_only,
                     open_metrics=open_metrics)
    server = uvicorn.Server(config)
    if announce is not None:
        shown = "localhost" if host in ("0.0.0.0", "::") else host
        announce(f"dashboard at http://{shown}:{port}/"
                 + (" (token required)" if token else "")
                 + (" (read-only)" if read_only else ""))
    server.run()


def start_in_background(redis_url: str, host: str = "127.0.0.1", port: int = 0, *,
                        read_only: bool = False, token: str | None = None,
                        timeout_s: float = 30.0) -> tuple[str, Callable[[], None]]:
    """Serve the dashboard from a daemon thread of this process; returns its URL (the
    port the system chose when ``port`` is 0) and a function that stops it. The token is
    ``token`` or ``$TUNECLUSTER_DASHBOARD_TOKEN`` (required off loopback)."""
    import uvicorn

    token = token if token is not None else os.environ.get(TOKEN_ENV)
    config = _config(redis_url, host, port, token=token, read_only=read_only,
                     open_metrics=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="tc-dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the dashboard did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host

    def stop() -> None:
        """Stop serving and the event readers; returns once the thread ended."""
        server.should_exit = True
        config.app.state.dashboard.hub.close()
        thread.join(10)

    return f"http://{shown}:{bound}", stop
