-- The settler's scan pages through unsettled orders by id: an index on (settled_at, id) serves it
-- in order and stops at the page's end, where (settled_at, version) made it sort every unsettled
-- order first (0.6 s at 130,000 of them on SQLite).
CREATE INDEX IF NOT EXISTS "ix_orders_unsettled_by_id" ON "orders" ("settled_at", "id");
DROP INDEX IF EXISTS ix_orders_unsettled;
