"""The clip-branches web app (Litestar + HTMX): ``create_app(["catalog.duckdb"])``.

``create_app`` is imported on first use, so the settings (``web.settings``) load without Litestar.
"""

from .settings import Settings


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'web' has no attribute {name!r}")


__all__ = ["Settings", "create_app"]
