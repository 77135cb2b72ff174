"""GET /api/v1/docs/: the API reference as a page, Swagger UI over /api/v1/openapi.json.

Swagger UI's files come from the `swagger-ui-py` wheel (Swagger UI 5, which reads
OpenAPI 3.1; the `swagger-ui-bundle` wheel ships 4.15, which does not): served from the
installed package, so the page works with no network and no CDN. Only the package's
static folder is used (found without importing the package, whose framework adapters
we do not need), and only the four files the page loads can be fetched.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

from api.errors import NotFound

DOCS_PATH: Final = "/api/v1/docs/"
# Outside /api/v1/: a browser fetches them without a token.
ASSETS_PATH: Final = "/static/docs/"
OPENAPI_URL: Final = "/api/v1/openapi.json"
ASSETS: Final = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
CACHE: Final = {"Cache-Control": "public, max-age=86400"}

PAGE: Final = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Server snapshots API reference</title>
  <link rel="stylesheet" href="{ASSETS_PATH}swagger-ui.css">
  <link rel="icon" type="image/png" href="{ASSETS_PATH}favicon-32x32.png">
  <style>body {{ margin: 0; }}</style>
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{ASSETS_PATH}swagger-ui-bundle.js"></script>
  <script src="{ASSETS_PATH}swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "{OPENAPI_URL}",
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout",
      persistAuthorization: false
    }});
  </script>
</body>
</html>
"""


@cache
def static_dir() -> Path:
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound("No such file in the API reference.")
    return FileResponse(static_dir() / name, media_type=media_type, headers=CACHE)
