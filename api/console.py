"""GET /console/: the web console, a page for an account's user (paste a token).

The page is plain HTML, CSS and JavaScript shipped in the package (``api/static/console/``):
no build step, no CDN, nothing fetched from elsewhere. Everything it shows it reads from
the API in the browser with the user's token (``fetch`` with a bearer header; the token
stays in ``sessionStorage``, never in a URL), so the web process serves files only.

Every answer carries a strict Content-Security-Policy: scripts, styles and connections
from this origin only, no inline script or style, no frames, no form posts, no base URL.
Only the files listed in ``FILES`` can be fetched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from api.errors import NotFound

CONSOLE_PATH: Final = "/console/"
FILES_DIR: Final = Path(__file__).resolve().parent / "static" / "console"
FILES: Final = {
    "console.js": "text/javascript; charset=utf-8",
    "client.js": "text/javascript; charset=utf-8",
    "view.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CSP: Final = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "connect-src 'self'",
    "img-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))
HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Small files: revalidated (ETag) on every load, so an upgrade never runs stale code.
    "Cache-Control": "no-cache",
}


async def page(request: Request) -> Response:
    return FileResponse(FILES_DIR / "index.html", media_type="text/html; charset=utf-8",
                        headers=HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = FILES.get(name)
    if media_type is None:
        raise NotFound("No such file in the console.")
    return FileResponse(FILES_DIR / name, media_type=media_type, headers=HEADERS)
