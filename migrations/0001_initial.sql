-- The catalog: images, their 32-byte codes in block order, block zone maps, settings.

-- One row per image. Metadata columns (label, caption, ...) are added as data arrives.
CREATE TABLE images (
    id BIGINT NOT NULL,
    uri VARCHAR,
    added_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- One row per image: its 8-bit code, one UTINYINT column per dim so that DuckDB keeps
-- min/max zone maps per column and pushes BETWEEN down into the scan.
-- pos is the row's place in block order; rows at pos >= the index's indexed_rows were added
-- after the last index build and are kept in insertion order.
CREATE TABLE codes (
    pos BIGINT NOT NULL,
    id BIGINT NOT NULL,
    f00 UTINYINT NOT NULL,
    f01 UTINYINT NOT NULL,
    f02 UTINYINT NOT NULL,
    f03 UTINYINT NOT NULL,
    f04 UTINYINT NOT NULL,
    f05 UTINYINT NOT NULL,
    f06 UTINYINT NOT NULL,
    f07 UTINYINT NOT NULL,
    f08 UTINYINT NOT NULL,
    f09 UTINYINT NOT NULL,
    f10 UTINYINT NOT NULL,
    f11 UTINYINT NOT NULL,
    f12 UTINYINT NOT NULL,
    f13 UTINYINT NOT NULL,
    f14 UTINYINT NOT NULL,
    f15 UTINYINT NOT NULL,
    f16 UTINYINT NOT NULL,
    f17 UTINYINT NOT NULL,
    f18 UTINYINT NOT NULL,
    f19 UTINYINT NOT NULL,
    f20 UTINYINT NOT NULL,
    f21 UTINYINT NOT NULL,
    f22 UTINYINT NOT NULL,
    f23 UTINYINT NOT NULL,
    f24 UTINYINT NOT NULL,
    f25 UTINYINT NOT NULL,
    f26 UTINYINT NOT NULL,
    f27 UTINYINT NOT NULL,
    f28 UTINYINT NOT NULL,
    f29 UTINYINT NOT NULL,
    f30 UTINYINT NOT NULL,
    f31 UTINYINT NOT NULL
);

-- Zone maps: block block_id holds codes rows with row_start <= pos < row_end.
CREATE TABLE blocks (
    block_id INTEGER NOT NULL,
    row_start BIGINT NOT NULL,
    row_end BIGINT NOT NULL,
    min_f00 UTINYINT NOT NULL, max_f00 UTINYINT NOT NULL,
    min_f01 UTINYINT NOT NULL, max_f01 UTINYINT NOT NULL,
    min_f02 UTINYINT NOT NULL, max_f02 UTINYINT NOT NULL,
    min_f03 UTINYINT NOT NULL, max_f03 UTINYINT NOT NULL,
    min_f04 UTINYINT NOT NULL, max_f04 UTINYINT NOT NULL,
    min_f05 UTINYINT NOT NULL, max_f05 UTINYINT NOT NULL,
    min_f06 UTINYINT NOT NULL, max_f06 UTINYINT NOT NULL,
    min_f07 UTINYINT NOT NULL, max_f07 UTINYINT NOT NULL,
    min_f08 UTINYINT NOT NULL, max_f08 UTINYINT NOT NULL,
    min_f09 UTINYINT NOT NULL, max_f09 UTINYINT NOT NULL,
    min_f10 UTINYINT NOT NULL, max_f10 UTINYINT NOT NULL,
    min_f11 UTINYINT NOT NULL, max_f11 UTINYINT NOT NULL,
    min_f12 UTINYINT NOT NULL, max_f12 UTINYINT NOT NULL,
    min_f13 UTINYINT NOT NULL, max_f13 UTINYINT NOT NULL,
    min_f14 UTINYINT NOT NULL, max_f14 UTINYINT NOT NULL,
    min_f15 UTINYINT NOT NULL, max_f15 UTINYINT NOT NULL,
    min_f16 UTINYINT NOT NULL, max_f16 UTINYINT NOT NULL,
    min_f17 UTINYINT NOT NULL, max_f17 UTINYINT NOT NULL,
    min_f18 UTINYINT NOT NULL, max_f18 UTINYINT NOT NULL,
    min_f19 UTINYINT NOT NULL, max_f19 UTINYINT NOT NULL,
    min_f20 UTINYINT NOT NULL, max_f20 UTINYINT NOT NULL,
    min_f21 UTINYINT NOT NULL, max_f21 UTINYINT NOT NULL,
    min_f22 UTINYINT NOT NULL, max_f22 UTINYINT NOT NULL,
    min_f23 UTINYINT NOT NULL, max_f23 UTINYINT NOT NULL,
    min_f24 UTINYINT NOT NULL, max_f24 UTINYINT NOT NULL,
    min_f25 UTINYINT NOT NULL, max_f25 UTINYINT NOT NULL,
    min_f26 UTINYINT NOT NULL, max_f26 UTINYINT NOT NULL,
    min_f27 UTINYINT NOT NULL, max_f27 UTINYINT NOT NULL,
    min_f28 UTINYINT NOT NULL, max_f28 UTINYINT NOT NULL,
    min_f29 UTINYINT NOT NULL, max_f29 UTINYINT NOT NULL,
    min_f30 UTINYINT NOT NULL, max_f30 UTINYINT NOT NULL,
    min_f31 UTINYINT NOT NULL, max_f31 UTINYINT NOT NULL
);

-- Catalog settings: encoder id, quantizer parameters, index parameters ... as JSON values.
CREATE TABLE settings (
    key VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);
