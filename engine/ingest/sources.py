"""Where images come from: folders walked recursively, and CSV or Parquet manifests.

:func:`scan_sources` turns the sources of one ingestion run into a flat list of image files,
each with its absolute, normalised path (the image's ``uri``), size and mtime, plus the
manifests' metadata rows. Nothing here decodes images or touches the catalog.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import IngestError
from ..store.database import DatabaseError
from ..store.parquet import read_csv
from ..store.sqlnames import IDENT

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
# Folders that operating systems and NAS boxes create for their own bookkeeping (compared
# case-insensitively); dot-folders are skipped anyway.
SYSTEM_FOLDERS = frozenset(
    name.lower()
    for name in (
        "__MACOSX",
        "@eaDir",
        "$RECYCLE.BIN",
        "RECYCLER",
        "System Volume Information",
        "lost+found",
        ".Trashes",
        ".Spotlight-V100",
        ".fseventsd",
        ".TemporaryItems",
        "#recycle",
        "#snapshot",
        ".snapshot",
        "@Recycle",
        ".@__thumb",
    )
)
SYSTEM_FILES = frozenset(name.lower() for name in ("Thumbs.db", "ehthumbs.db", "desktop.ini", ".DS_Store"))
MANIFEST_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
URI_COLUMN = "uri"
MISSING = "file not found"  # the reason given for a manifest row whose file does not exist
# Reasons given for files whose path is not valid UTF-8: the catalog stores uris as text, and the
# bytes of such a name come to Python as lone surrogates (PEP 383), which DuckDB and Arrow refuse.
NOT_UTF8_FILE = "the file name is not valid UTF-8; rename it"
NOT_UTF8_FOLDER = "a folder name in the path is not valid UTF-8; rename the folder"

# Columns ingestion fills itself; a manifest column of the same name is ignored, since the
# measured value (file size, decoded width, ...) is the authoritative one.
RESERVED_COLUMNS = frozenset(
    {
        "id",
        "pos",
        "added_at",
        "uri",
        "source",
        "file_size",
        "file_mtime_ns",
        "width",
        "height",
        "embedding_part",
        *(f"f{d:02d}" for d in range(32)),
    }
)


@dataclass(frozen=True)
class Source:
    """One source of an ingestion run: ``key`` is its absolute, normalised path."""

    key: str
    kind: str  # "folder" or "manifest"


@dataclass
class ManifestRows:
    """The metadata of one manifest's usable rows: ``table`` row i belongs to file
    ``entries[i]`` (int64 positions into :class:`ScannedFiles`)."""

    entries: np.ndarray
    table: pa.Table


@dataclass
class ScannedFiles:
    """The image files of one run, one entry per distinct uri.

    uris : absolute, normalised paths
    sizes, mtimes_ns : int64 (n,), from ``os.stat`` at scan time
    source_index : int32 (n,), positions into ``sources``
    problems : (uri, reason) for files, manifest rows and folders that could not be used; the
        uri is a label for people (see :func:`printable_path`), not always a usable path
    unlisted_dirs : folders that could not be listed; images under them must not be treated as deleted
    """

    sources: list[Source]
    uris: list[str] = field(default_factory=list)
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    mtimes_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    source_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    manifests: list[ManifestRows] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    unlisted_dirs: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.uris)

    def folder_prefixes(self) -> list[str]:
        """Every folder source as a path prefix ending in the separator."""
        return [_as_prefix(s.key) for s in self.sources if s.kind == "folder"]


def resolve_source(path: str | os.PathLike) -> Source:
    """A folder or manifest path as a :class:`Source`; :class:`IngestError` when it is neither."""
    key = os.path.abspath(os.fspath(path))
    if utf8_problem(key) is not None:
        raise IngestError(
            f"source {printable_path(key)} is not valid UTF-8 text, so the paths of its images "
            "cannot be stored; rename the file or folder whose name is not"
        )
    if os.path.isdir(key):
        return Source(key, "folder")
    if not os.path.exists(key):
        raise IngestError(
            f"source {os.fspath(path)!r} does not exist; give an image folder or a CSV/Parquet manifest"
        )
    if Path(key).suffix.lower() in MANIFEST_FORMATS and os.path.isfile(key):
        return Source(key, "manifest")
    raise IngestError(
        f"source {os.fspath(path)!r} is neither a folder nor a manifest; "
        f"manifests are {', '.join(sorted(MANIFEST_FORMATS))} files with a {URI_COLUMN!r} column"
    )


def scan_sources(paths: Sequence[str | os.PathLike]) -> ScannedFiles:
    """Every image file of the given folders and manifests, once each.

    A file listed by a manifest belongs to the first manifest listing it (and takes its
    metadata) even when a folder source holds it too; folder files come in path order.
    Raises :class:`IngestError` for a missing source or an unreadable manifest.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    sources = list(dict.fromkeys(resolve_source(p) for p in paths))
    if not sources:
        raise IngestError("no sources given; pass at least one image folder or manifest")
    out = ScannedFiles(sources)
    seen: dict[str, int] = {}
    uris: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    owner: list[int] = []

    def add(uri: str, st: os.stat_result, src: int) -> int:
        seen[uri] = len(uris)
        uris.append(uri)
        sizes.append(st.st_size)
        mtimes.append(st.st_mtime_ns)
        owner.append(src)
        return seen[uri]

    order = [i for i, s in enumerate(sources) if s.kind == "manifest"] + [
        i for i, s in enumerate(sources) if s.kind == "folder"
    ]
    for src in order:
        source = sources[src]
        if source.kind == "manifest":
            table = read_manifest(source.key)
            entries, rows = [], []
            for row, (uri, st, problem) in enumerate(_manifest_files(table, source.key)):
                if problem is not None:
                    out.problems.append((uri, problem))
                elif uri not in seen:
                    entries.append(add(uri, st, src))
                    rows.append(row)
            meta = table.drop_columns([URI_COLUMN]).take(pa.array(rows, pa.int64()))
            out.manifests.append(ManifestRows(np.asarray(entries, np.int64), meta))
        else:
            for uri, st in walk_folder(source.key, out.problems, out.unlisted_dirs):
                if uri not in seen:
                    add(uri, st, src)
    out.uris = uris
    out.sizes = np.asarray(sizes, np.int64)
    out.mtimes_ns = np.asarray(mtimes, np.int64)
    out.source_index = np.asarray(owner, np.int32)
    return out


# -- folders ---------------------------------------------------------------------------------
def is_skipped_name(name: str, is_dir: bool) -> bool:
    """Hidden (dot) names, and the folders and files systems create for their own use."""
    if name.startswith("."):
        return True
    return name.lower() in (SYSTEM_FOLDERS if is_dir else SYSTEM_FILES)


def utf8_problem(path: str) -> str | None:
    """None when ``path`` can be stored as a uri, else why not (:data:`NOT_UTF8_FILE` or
    :data:`NOT_UTF8_FOLDER`)."""
    if _is_utf8(path):
        return None
    return NOT_UTF8_FOLDER if _is_utf8(os.path.basename(path)) else NOT_UTF8_FILE


def printable_path(path: str) -> str:
    """``path`` as valid UTF-8 text, for reports and the ``skipped`` table: bytes of its name
    that are not UTF-8 are written as ``\\xNN``."""
    try:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name produces
        return path.encode("utf-8", "backslashreplace").decode("utf-8")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def walk_folder(
    root: str, problems: list[tuple[str, str]] | None = None, unlisted: list[str] | None = None
) -> Iterable[tuple[str, os.stat_result]]:
    """Image files under ``root`` (recursively, sorted by path) with their stat results.

    Directory symlinks are not followed (they can loop); file symlinks are. Folders that cannot
    be listed are appended to ``problems`` and ``unlisted`` and skipped; so are image files whose
    path is not valid UTF-8 (see :func:`utf8_problem`), to ``problems`` only.
    """
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        if problems is not None:
            problems.append((printable_path(root), f"cannot list folder: {e.strerror or e}"))
        if unlisted is not None:
            unlisted.append(root)
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if not is_skipped_name(entry.name, True):
                    yield from walk_folder(entry.path, problems, unlisted)
            elif (
                not is_skipped_name(entry.name, False)
                and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            ):
                st = entry.stat()
                if stat.S_ISREG(st.st_mode):
                    path = os.path.normpath(entry.path)
                    problem = utf8_problem(path)
                    if problem is None:
                        yield path, st
                    elif problems is not None:
                        problems.append((printable_path(path), problem))
        except OSError as e:  # vanished or unreadable between listing and stat
            if problems is not None:
                problems.append(
                    (printable_path(os.path.normpath(entry.path)), f"cannot stat: {e.strerror or e}")
                )


# -- manifests -------------------------------------------------------------------------------
def read_manifest(path: str | os.PathLike) -> pa.Table:
    """A CSV or Parquet manifest as an Arrow table whose ``uri`` column is a string column.

    CSV column types are inferred from every row (not a sample), so a late odd value cannot
    break the run halfway. Raises :class:`IngestError` when the file is unreadable or has no
    ``uri`` column.
    """
    path = os.fspath(path)
    kind = MANIFEST_FORMATS.get(Path(path).suffix.lower())
    try:
        if kind == "csv":
            table = read_csv(path, URI_COLUMN)
        elif kind == "parquet":
            table = _decode_dictionaries(pq.read_table(path))
        else:
            raise IngestError(f"{path}: manifests must be {', '.join(sorted(MANIFEST_FORMATS))} files")
    except (DatabaseError, pa.ArrowException, OSError) as e:
        raise IngestError(f"manifest {path} could not be read: {str(e).splitlines()[0]}") from None
    if URI_COLUMN not in table.column_names:
        near = [c for c in table.column_names if c.lower() == URI_COLUMN]
        hint = (
            f"rename column {near[0]!r} to {URI_COLUMN!r}"
            if near
            else f"add a {URI_COLUMN!r} column with the image paths"
        )
        raise IngestError(
            f"manifest {path} has no {URI_COLUMN!r} column (columns: {', '.join(table.column_names)}); {hint}"
        )
    col = table.column(URI_COLUMN)
    if not pa.types.is_string(col.type):
        try:
            col = pc.cast(col, pa.string())
        except pa.ArrowException:
            raise IngestError(
                f"manifest {path}: the {URI_COLUMN!r} column must hold text, not {col.type}"
            ) from None
        table = table.set_column(table.column_names.index(URI_COLUMN), URI_COLUMN, col)
    return table


def _decode_dictionaries(table: pa.Table) -> pa.Table:
    """Dictionary (categorical) columns as plain columns of their value type."""
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(i, f.name, pc.cast(table.column(i), f.type.value_type))
    return table


def _manifest_files(
    table: pa.Table, manifest: str
) -> Iterable[tuple[str, os.stat_result | None, str | None]]:
    """(uri, stat, None) for each usable row of ``table``, (label, None, reason) for the others.
    The label of a row whose path is not valid UTF-8 is the row's text."""
    base = os.path.dirname(manifest)
    for row, raw in enumerate(table.column(URI_COLUMN).to_pylist()):
        where = f"{manifest}#row={row + 1}"
        path, problem = manifest_path(raw, base)
        if path is None:
            yield (raw.strip() if raw and raw.strip() else where), None, problem
            continue
        problem = utf8_problem(path)
        label = path if problem is None else raw.strip()
        try:
            st = os.stat(path)
        except FileNotFoundError:
            yield label, None, MISSING
            continue
        except OSError as e:
            yield label, None, f"cannot stat: {e.strerror or e}"
            continue
        if not stat.S_ISREG(st.st_mode):
            yield label, None, "not a regular file"
            continue
        if problem is not None:
            yield label, None, problem
            continue
        yield path, st, None


def manifest_path(raw: str | None, base_dir: str) -> tuple[str | None, str | None]:
    """A manifest's uri value as an absolute, normalised local path, or (None, reason).

    Relative paths resolve against ``base_dir`` (the manifest's folder); ``file://`` URLs are
    accepted; other URLs are not fetched. Percent-escapes that are not UTF-8 (``%E9``) give the
    raw byte, as the file system names it, so such a path is found but is not valid UTF-8.
    """
    if raw is None or not raw.strip():
        return None, "empty uri"
    text = raw.strip()
    if "://" in text:
        parsed = urlparse(text)
        if parsed.scheme != "file":
            return None, f"{parsed.scheme}:// uris are not fetched; download the files and list local paths"
        text = unquote(parsed.path, errors="surrogateescape")
    return os.path.normpath(
        os.path.join(base_dir, os.path.expanduser(text) if text.startswith("~") else text)
    ), None


def check_metadata_columns(names: Sequence[str], manifest: str) -> tuple[list[str], list[str]]:
    """Split a manifest's metadata column names into (kept, ignored).

    Ignored are the columns ingestion fills itself (:data:`RESERVED_COLUMNS`). Raises
    :class:`IngestError` for names that are not plain identifiers or that clash case-insensitively.
    """
    bad = [n for n in names if not IDENT.match(n)]
    if bad:
        raise IngestError(
            f"manifest {manifest}: column name(s) {', '.join(map(repr, bad))} are not allowed; "
            "rename them to letters, digits and _ (not starting with a digit, at most 63 characters)"
        )
    lowered = [n.lower() for n in names]
    dupes = sorted({n for n in names if lowered.count(n.lower()) > 1})
    if dupes:
        raise IngestError(
            f"manifest {manifest}: columns {', '.join(dupes)} differ only in case; rename one of them"
        )
    kept = [n for n in names if n.lower() not in RESERVED_COLUMNS]
    ignored = [n for n in names if n.lower() in RESERVED_COLUMNS]
    return kept, ignored


def _as_prefix(folder: str) -> str:
    return folder if folder.endswith(os.sep) else folder + os.sep
