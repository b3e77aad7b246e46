-- Trained artifacts stored with the catalog (the head's weights), with their checksums.
CREATE TABLE artifacts (
    name VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    data BLOB NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
