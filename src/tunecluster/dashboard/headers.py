"""Security headers on every response of the dashboard: pages, API answers, assets,
errors, redirects and the event stream alike (an ASGI middleware outside ``TokenAuth``,
so its refusals carry them too).

The Content-Security-Policy allows what the pages use and nothing else: scripts only
from the dashboard itself (``/static/app.js`` and plotly.js from the wheel, no inline
script: a page's settings travel in a JSON data block, which is never run), requests
only to itself (the API, the event stream), no plugins, no frames, no base or form
target elsewhere. ``style-src`` allows inline styles: plotly.js sets style attributes
and fills its own <style> element while it draws, and CSS cannot run script.

One exception, the Job view (``CSP_JOB_VIEW``): its parallel coordinates are drawn with
WebGL by plotly's regl, which compiles its draw calls with ``Function``, so that page's
``script-src`` adds ``'unsafe-eval'`` (still no inline script and nothing from
elsewhere). The application sets that header itself; this middleware keeps a CSP the
application set and adds the strict one everywhere else.
"""

from __future__ import annotations

from typing import Any

POLICY = (
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",  # plotly's modebar icons and its PNG download
    "font-src 'self' data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
)
CSP = "; ".join(POLICY)
CSP_JOB_VIEW = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-eval'")
CSP_HEADER = b"content-security-policy"
HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
NAMES = {name for name, _ in HEADERS}


class SecurityHeaders:
    """The ASGI middleware that adds ``HEADERS`` to every HTTP response (replacing any
    the application set), and ``CSP`` unless the application set a policy."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", [])
                        if k.lower() not in NAMES]
                if not any(k.lower() == CSP_HEADER for k, _ in kept):
                    kept.append((CSP_HEADER, CSP.encode()))
                message = {**message, "headers": [*kept, *HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
