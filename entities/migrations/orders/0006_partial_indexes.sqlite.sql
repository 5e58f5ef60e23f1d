-- The four scans of live rows read partial indexes that hold only those rows: orders waiting for a
-- result by deadline (dispatched, version 2), the partners' pending orders (accepted or dispatched,
-- versions below 3), unsettled orders by id, and unpublished outbox rows by id. An order's status
-- changes then touch only the index it enters or leaves, where the full indexes moved an entry in
-- two of them at each of its writes and kept every order, and every outbox row, forever.
DROP INDEX IF EXISTS ix_orders_deadline;
DROP INDEX IF EXISTS ix_orders_pending;
DROP INDEX IF EXISTS ix_orders_unsettled_by_id;
DROP INDEX IF EXISTS ix_outbox_unpublished;
CREATE INDEX IF NOT EXISTS "ix_orders_dispatched_by_deadline" ON "orders" ("result_deadline") WHERE version = 2;
CREATE INDEX IF NOT EXISTS "ix_orders_pending_by_partner" ON "orders" ("partner_id") WHERE version < 3;
CREATE INDEX IF NOT EXISTS "ix_orders_unsettled_ids" ON "orders" ("id") WHERE settled_at IS NULL;
CREATE INDEX IF NOT EXISTS "ix_outbox_unpublished_ids" ON "outbox" ("id") WHERE published_at IS NULL;
