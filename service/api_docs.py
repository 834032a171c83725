"""Interactive API documentation at /docs that works without internet: Swagger UI served from this server.

FastAPI's own /docs page loads Swagger UI's JavaScript and CSS from a CDN, so it stays blank on an air-gapped
machine. Here the same page (FastAPI's `get_swagger_ui_html`) points at the Swagger UI 5 assets shipped in the
`fastapi-offline` package, mounted under /docs/assets. Swagger UI's online validator badge is switched off
(`validatorUrl: null`), so the page makes no request beyond this server.

Public, like /openapi.json (FastAPI's route, outside the bearer-protected router): the page and its assets are
static and say nothing the public schema does not, and a browser cannot send a bearer token when it merely
navigates to a page. The operations it lists stay protected when BNFOLD_API_KEY is set.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")


def assets_directory() -> Path:
    """The directory of Swagger UI's files inside the installed fastapi-offline package."""
    return Path(str(files("fastapi_offline") / "static"))


def add_api_docs(app: FastAPI) -> None:
    """Serve Swagger UI at /docs for the app's /openapi.json, with every asset from this server."""
    directory = assets_directory()
    missing = [name for name in ASSET_FILES if not (directory / name).is_file()]
    if missing:
        raise RuntimeError(
            f"fastapi-offline at {directory} lacks {missing}; reinstall it (pip install fastapi-offline)"
        )
    app.mount(ASSETS_PATH, StaticFiles(directory=directory), name="api-docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    title = f"{app.title} - API documentation"

    @app.get(DOCS_PATH, include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters={"validatorUrl": None},
        )
