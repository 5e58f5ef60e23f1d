-- The settler's scan reads unsettled orders whose result event is out (version 4 and on). Its index
-- held every unsettled order, so an order entered it at each of its first four writes (none of them
-- an in-place update: each changes a column another index's condition reads) and left an entry per
-- write for vacuum to remove, which the scan stepped over meanwhile. Holding only the orders the
-- scan can settle, the index takes an order once, when its result event is out.
DROP INDEX IF EXISTS ix_orders_unsettled_ids;
CREATE INDEX IF NOT EXISTS "ix_orders_settleable_ids" ON "order_state" ("id") WHERE settled_at IS NULL AND version >= 4;
