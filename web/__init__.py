"""The clip-branches web app (Litestar + HTMX): ``create_app(["catalog.duckdb"])``."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
