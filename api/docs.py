"""Swagger UI (/docs) and ReDoc (/redoc) from files installed with the project, never from a CDN.

FastAPI's own pages load their JavaScript and CSS from a CDN and start Swagger UI with an inline
script, so they are blank offline and under a Content-Security-Policy without 'unsafe-inline'. The
pages here load only same-origin URLs: the files the `fastapi-offline` package ships
(swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png) under /docs/static/, and
Swagger UI's start-up script from /docs/swagger-init.js. `install(app)` removes FastAPI's pages
(wherever app.docs_url and app.redoc_url put them) and serves these at the same URLs
(/docs and /redoc when the app left them unset).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from service.platform.errors import NotFound

STATIC_DIR = Path(fastapi_offline.__file__).parent / "static"
STATIC_FILES = {  # name -> media type; nothing else under /docs/static is served
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
STATIC_URL = "/docs/static"
INIT_URL = "/docs/swagger-init.js"
# The pages run only same-origin scripts; both UIs set inline styles, and ReDoc's search runs in a
# worker it makes from a blob.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=86400"}
SWAGGER_DEFAULTS: dict[str, Any] = {
    "dom_id": "#swagger-ui",
    "layout": "BaseLayout",
    "deepLinking": True,
    "showExtensions": True,
    "showCommonExtensions": True,
}


def page(title: str, head: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n{head}</head>\n<body>\n{body}</body>\n</html>\n"
    )


def static_url(request: Request, name: str) -> str:
    return html.escape(f"{request.scope.get('root_path', '')}{STATIC_URL}/{name}")


def swagger_page(request: Request, title: str) -> str:
    root = request.scope.get("root_path", "")
    head = (
        f'<link rel="icon" type="image/png" href="{static_url(request, "favicon.png")}">\n'
        f'<link rel="stylesheet" href="{static_url(request, "swagger-ui.css")}">\n'
    )
    body = (
        '<div id="swagger-ui"></div>\n'
        f'<script src="{static_url(request, "swagger-ui-bundle.js")}"></script>\n'
        f'<script src="{html.escape(root + INIT_URL)}"></script>\n'
    )
    return page(f"{title} - Swagger UI", head, body)


def swagger_init(request: Request, openapi_url: str, parameters: dict[str, Any] | None) -> str:
    """Swagger UI's start-up script, served as a file so the page needs no inline script."""
    config = {**SWAGGER_DEFAULTS, **(parameters or {}), "url": f"{request.scope.get('root_path', '')}{openapi_url}"}
    # json.dumps of plain values is a JavaScript expression; presets are functions, named here
    return (
        f"window.ui = SwaggerUIBundle(Object.assign({json.dumps(config)}, {{\n"
        "  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],\n"
        "}));\n"
    )


def redoc_page(request: Request, title: str, openapi_url: str) -> str:
    spec_url = html.escape(f"{request.scope.get('root_path', '')}{openapi_url}")
    head = f'<link rel="icon" type="image/png" href="{static_url(request, "favicon.png")}">\n'
    script = static_url(request, "redoc.standalone.js")
    body = f'<redoc spec-url="{spec_url}"></redoc>\n<script src="{script}"></script>\n'
    return page(f"{title} - ReDoc", head, body)


def is_fastapi_page(route: BaseRoute, urls: set[str]) -> bool:
    """One of the pages FastAPI.setup() added (a plain Starlette Route, not an API route)."""
    return isinstance(route, Route) and not isinstance(route, APIRoute) and route.path in urls


def install(app: FastAPI) -> None:
    """Serve Swagger UI and ReDoc from installed files (see the module's docstring). Idempotent."""
    if getattr(app.state, "offline_docs", False):
        return
    app.state.offline_docs = True
    if app.openapi_url is None:  # no document, nothing to show
        return
    openapi_url = app.openapi_url
    docs_url, redoc_url = app.docs_url or DOCS_URL, app.redoc_url or REDOC_URL
    fastapi_pages = {url for url in (app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if url}
    app.router.routes[:] = [route for route in app.router.routes if not is_fastapi_page(route, fastapi_pages)]
    app.docs_url, app.redoc_url = docs_url, redoc_url

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return HTMLResponse(swagger_page(request, app.title), headers=PAGE_HEADERS)

    @app.get(INIT_URL, include_in_schema=False)
    async def swagger_ui_init(request: Request) -> Response:
        script = swagger_init(request, openapi_url, app.swagger_ui_parameters)
        return Response(script, media_type="text/javascript; charset=utf-8", headers=PAGE_HEADERS)

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return HTMLResponse(redoc_page(request, app.title, openapi_url), headers=PAGE_HEADERS)

    @app.get(STATIC_URL + "/{name}", include_in_schema=False)
    async def docs_file(name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise NotFound(f"no docs file named {name[:80]!r}", field="path.name")
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name], headers=FILE_HEADERS)
