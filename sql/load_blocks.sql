-- The zone maps of the last index build, in block order.
SELECT * FROM blocks ORDER BY block_id
