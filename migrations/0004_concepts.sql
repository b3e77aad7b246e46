-- Saved concepts: a fine-tuned box set kept under a name, with the labels it was trained on.
-- Each concept also lives in the file as a view, concept_<name> (id, votes, rank), that any
-- DuckDB client can query; the table macro concept(name) reads any of them by name.
--
-- definition is JSON: the boxes and their members, the vote threshold, the centre whose
-- distance ranks rows of equal votes, and the request (positives, negatives, model, options)
-- to train it again. codes_space names the codes the boxes were fitted on (the setting
-- codes_space when it was saved): once the catalog's codes are computed by another head or
-- quantizer the concept is stale, and its view raises an error instead of a wrong answer.
-- seen_id is the largest image id when the concept was last opened: its rows above it are new.
CREATE TABLE concepts (
    name VARCHAR NOT NULL,
    definition VARCHAR NOT NULL,
    codes_space VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    updated_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    seen_id BIGINT
);
