-- Macros every console query can use (created in the temporary schema of its own cursor).
-- `last_result(id, score, rank)` is the last search or refine result of the browser tab.

-- The last result with every image column, best first; filter it by metadata:
--   SELECT id, label FROM result_images() WHERE label = 'Sneaker'
CREATE OR REPLACE TEMP MACRO result_images() AS TABLE
SELECT r.rank, r.score, i.*
FROM last_result AS r JOIN images AS i USING (id)
ORDER BY r.rank;

-- Whether an image is in the last result:  SELECT * FROM catalog WHERE in_last_result(id) AND f03 < 50
CREATE OR REPLACE TEMP MACRO in_last_result(image_id) AS image_id IN (SELECT id FROM last_result);

-- Images added after a moment:  SELECT * FROM result_images() WHERE id IN (SELECT id FROM added_after(TIMESTAMP '2026-01-01'))
CREATE OR REPLACE TEMP MACRO added_after(ts) AS TABLE
SELECT id, added_at FROM images WHERE added_at > ts;
