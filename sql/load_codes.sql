-- All codes in block order, for the in-memory scan index.
SELECT * FROM codes ORDER BY pos
