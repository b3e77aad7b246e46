"""The web app's settings: one declared table feeds the app, the CLI and the docs test."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from engine.errors import InvalidArgument


@dataclass(frozen=True)
class Settings:
    page_size: int = field(default=60, metadata={"help": "thumbnails per page of results"})
    results_kept: int = field(default=64, metadata={"help": "results kept in memory for paging"})
    result_ids_kept: int = field(
        default=20_000_000, metadata={"help": "result ids kept in memory, all results together"}
    )
    sql_time_limit_s: float = field(default=5.0, metadata={"help": "console query time limit, seconds"})
    sql_max_rows: int = field(default=500, metadata={"help": "rows a console query shows at most"})
    sql_max_bytes: int = field(
        default=2_000_000, metadata={"help": "bytes of rows a console query shows at most"}
    )
    sql_memory_limit: str = field(
        default="1GB", metadata={"help": "memory each console query may use (its own process)"}
    )
    sql_workers: int = field(
        default=2, metadata={"help": "console queries a catalog runs at once (one process each)"}
    )
    max_concurrent: int = field(
        default=4,
        metadata={
            "help": "searches and fine-tunes a catalog works on at once; more wait half a second, then get a 503"
        },
    )
    max_labels: int = field(
        default=2000, metadata={"help": "labels, positive and negative together, one fine-tune uses"}
    )
    max_upload_bytes: int = field(default=20_000_000, metadata={"help": "largest query image accepted"})
    thumb_max_age_s: int = field(default=86_400, metadata={"help": "Cache-Control max-age of thumbnails"})
    fold_idle_s: float = field(
        default=20.0,
        metadata={
            "help": "seconds without requests after which images added while serving join the k-d order"
        },
    )
    fold_max_rows: int = field(
        default=5_000_000,
        metadata={
            "help": "largest catalog the server re-indexes itself; larger ones wait for `clip-branches index`"
        },
    )
    watch_every_s: float = field(
        default=2.0, metadata={"help": "how often --watch folders are scanned, seconds"}
    )
    allowed_hosts: str = field(
        default="",
        metadata={
            "help": (
                "more host names the server answers to, comma-separated (NAME or NAME:PORT; * for any): "
                "localhost, 127.0.0.1, [::1] and the --host address always work, other Host headers get a 400"
            )
        },
    )

    @classmethod
    def parse(cls, assignments: list[str]) -> Settings:
        """Settings from ``NAME=VALUE`` texts (the CLI's ``serve --setting NAME VALUE`` and
        ``--set NAME=VALUE``), each value checked."""
        known = {f.name: f for f in fields(cls)}
        values: dict = {}
        for text in assignments:
            name, sep, raw = text.partition("=")
            name = name.strip()
            if not sep or name not in known:
                raise InvalidArgument(
                    f"a setting takes a NAME and a VALUE, with NAME one of {', '.join(known)}; got {text!r}"
                )
            kind = {"int": int, "float": float, "str": str}[str(known[name].type)]
            try:
                value = kind(raw.strip().replace("_", "") if kind is not str else raw.strip())
            except ValueError:
                raise InvalidArgument(f"setting {name}: {raw!r} is not a valid {kind.__name__}") from None
            if kind is not str and value <= 0:
                raise InvalidArgument(f"setting {name}: must be positive, got {raw!r}")
            values[name] = value
        return cls(**values)

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}
