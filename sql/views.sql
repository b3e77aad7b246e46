-- Views over the catalog tables. Recreated whenever the images table gains columns, since a
-- DuckDB view is bound to the columns its tables had when it was created.

-- Every image with its metadata and its code: combine a box predicate with metadata filters,
-- e.g.  SELECT id, uri FROM catalog WHERE (f03 BETWEEN 10 AND 40) AND label = 'Sneaker'
CREATE OR REPLACE VIEW catalog AS
SELECT i.*, c.* EXCLUDE (id)
FROM images AS i JOIN codes AS c USING (id);

-- The index's blocks with their sizes, for inspecting the layout.
CREATE OR REPLACE VIEW block_sizes AS
SELECT block_id, row_start, row_end, row_end - row_start AS n_rows
FROM blocks;
