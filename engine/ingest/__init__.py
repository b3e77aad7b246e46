"""Ingestion: image files to raw embeddings in the catalog, incrementally and resumably.

A run scans its sources (:mod:`engine.ingest.sources`), compares each file's path, size and mtime
with the catalog to sort it into new, changed, unchanged or known-bad, and embeds the new and
changed ones. Worker processes decode (:mod:`engine.ingest.imageio`), preprocess and write thumbnails;
this process encodes and writes. Each batch is committed on its own: its float16 Parquet part is
written and renamed into ``<catalog>.d/embeddings/`` first, then its ``images`` rows, its
``embedding_parts`` row and its ``skipped`` rows land in one transaction. A run stopped at any
point therefore leaves whole batches or nothing, and the next run picks up where it stopped.
Files gone from a source are removed at the end with :meth:`Catalog.remove`.

One run (:class:`~engine.ingest.run.IngestRun`) has two drivers: :func:`~engine.ingest.local.ingest`
encodes in this process; :mod:`engine.ingest.spark` encodes on Spark workers into a staging
folder that :func:`~engine.ingest.parts.ingest_parts` takes in. Raw embeddings live in Parquet
parts (:mod:`engine.ingest.embeddings`). This package reads and writes the catalog through
:class:`engine.Catalog` and its :class:`~engine.store.Store`; it imports no driver of another.
"""

from .local import ingest
from .run import IngestReport

__all__ = ["IngestReport", "ingest"]
