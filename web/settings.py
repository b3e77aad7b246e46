"""The web app's settings: one declared table feeds the app, the CLI and the docs test."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Settings:
    page_size: int = field(default=60, metadata={"help": "thumbnails per page of results"})
    results_kept: int = field(default=64, metadata={"help": "results kept in memory for paging"})
    result_ids_kept: int = field(default=20_000_000, metadata={"help": "result ids kept in memory, all results together"})
    sql_time_limit_s: float = field(default=5.0, metadata={"help": "console query time limit, seconds"})
    sql_max_rows: int = field(default=500, metadata={"help": "rows a console query shows at most"})
    sql_memory_limit: str = field(default="1GB", metadata={"help": "memory all queries of a catalog may use"})
    max_upload_bytes: int = field(default=20_000_000, metadata={"help": "largest query image accepted"})
    thumb_max_age_s: int = field(default=86_400, metadata={"help": "Cache-Control max-age of thumbnails"})

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}
