-- All codes with their positions, in the table's order, for the in-memory scan index; the
-- loader puts each row at its pos, so no sort is needed.
SELECT * FROM codes
