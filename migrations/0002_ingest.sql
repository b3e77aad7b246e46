-- Ingestion: where each image came from, its raw embedding, and files that could not be read.

-- The file behind each image, so a re-run can tell new, changed and deleted files apart.
-- embedding_part names the Parquet part (see embedding_parts) holding the current raw embedding;
-- NULL while the image has none (e.g. rows added as codes only). source is the folder or
-- manifest that last listed the file: a run removes only images of its own sources.
ALTER TABLE images ADD COLUMN source VARCHAR;
ALTER TABLE images ADD COLUMN file_size BIGINT;
ALTER TABLE images ADD COLUMN file_mtime_ns BIGINT;
ALTER TABLE images ADD COLUMN width INTEGER;
ALTER TABLE images ADD COLUMN height INTEGER;
ALTER TABLE images ADD COLUMN embedding_part INTEGER;

-- Raw embeddings live as float16 Parquet parts in the catalog's side folder
-- (<catalog>.d/embeddings/). A part is written and renamed into place first, then recorded
-- here in the same transaction as its images; a part on disk but not here is debris from an
-- interrupted run and is deleted on the next one.
CREATE TABLE embedding_parts (
    part_id INTEGER NOT NULL,
    file VARCHAR NOT NULL,
    encoder VARCHAR NOT NULL,
    dim INTEGER NOT NULL,
    n_rows BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Files that were found but could not be used (corrupt, truncated, not an image, too large).
-- Keyed on uri with size and mtime, so an unchanged bad file is not retried on every run.
CREATE TABLE skipped (
    uri VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    file_size BIGINT,
    file_mtime_ns BIGINT,
    seen_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- One row per ingestion run, for progress reports and to resume an interrupted one.
CREATE TABLE ingest_runs (
    run_id INTEGER NOT NULL,
    sources VARCHAR NOT NULL,
    encoder VARCHAR NOT NULL,
    started_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    finished_at TIMESTAMP,
    added BIGINT NOT NULL DEFAULT 0,
    updated BIGINT NOT NULL DEFAULT 0,
    removed BIGINT NOT NULL DEFAULT 0,
    skipped BIGINT NOT NULL DEFAULT 0
);
