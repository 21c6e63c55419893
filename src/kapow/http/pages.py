"""The web console: its page and its static files (plain HTML, CSS and JavaScript, no build step)."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from kapow.http.common import ApiError
from kapow.http.state import state_of

ASSETS = {"app.js": "text/javascript; charset=utf-8", "audit.js": "text/javascript; charset=utf-8",
          "app.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def read_asset(name: str) -> bytes:
    return resources.files("kapow.http").joinpath("console", name).read_bytes()


def load() -> tuple[bytes, dict[str, bytes]]:
    """The page and every asset, read once when the app is built."""
    return read_asset("index.html"), {name: read_asset(name) for name in ASSETS}


async def console(request: Request) -> Response:
    return Response(state_of(request).index, media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    assets = state_of(request).assets
    if name not in assets:
        raise ApiError(404, f"no console asset {name[:60]!r}")
    return Response(assets[name], media_type=ASSETS[name], headers={"Cache-Control": "no-cache"})
