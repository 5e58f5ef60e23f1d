-- The order in two tables: what was submitted, written once (`order_facts`), and what changes
-- with its story (`order_state`: status, version, each transition's time, the result deadline
-- and the settlement), a narrow row that carries the partial indexes of live orders. A status
-- change then rewrites the narrow row and touches the state's indexes only; the submitted fields
-- and their indexes (the idempotency key, each user's orders) are written once, at submit.
-- `orders` becomes a view of both with the columns the table had, so every read is unchanged.
-- On SQLite the state is a WITHOUT ROWID table: its rows live in its primary key's B-tree.
CREATE TABLE "order_facts" ( "id" varchar NOT NULL PRIMARY KEY, "user_id" varchar NOT NULL, "request_id" varchar NOT NULL, "partner_id" varchar NOT NULL, "product" varchar NOT NULL, "amount_minor" integer NOT NULL, "currency" varchar NOT NULL, "items" jsonb_text NOT NULL, "payload" jsonb_text NOT NULL, "created_at" timestamp_with_timezone_text NOT NULL );
CREATE TABLE "order_state" ( "id" varchar NOT NULL PRIMARY KEY, "partner_id" varchar NOT NULL, "status" varchar NOT NULL, "version" integer NOT NULL, "result_deadline" timestamp_with_timezone_text, "settled_at" timestamp_with_timezone_text, "updated_at" timestamp_with_timezone_text NOT NULL, "dispatched_at" timestamp_with_timezone_text, "result_stored_at" timestamp_with_timezone_text, "notified_at" timestamp_with_timezone_text, "late_result_stored_at" timestamp_with_timezone_text, "late_notified_at" timestamp_with_timezone_text ) WITHOUT ROWID;
INSERT INTO "order_facts" ("id", "user_id", "request_id", "partner_id", "product", "amount_minor", "currency", "items", "payload", "created_at")
  SELECT "id", "user_id", "request_id", "partner_id", "product", "amount_minor", "currency", "items", "payload", "created_at" FROM "orders";
INSERT INTO "order_state" ("id", "partner_id", "status", "version", "result_deadline", "settled_at", "updated_at", "dispatched_at", "result_stored_at", "notified_at", "late_result_stored_at", "late_notified_at")
  SELECT "id", "partner_id", "status", "version", "result_deadline", "settled_at", "updated_at", "dispatched_at", "result_stored_at", "notified_at", "late_result_stored_at", "late_notified_at" FROM "orders";
DROP TABLE "orders";
CREATE UNIQUE INDEX "ux_orders_user_request" ON "order_facts" ("user_id", "request_id");
CREATE INDEX "ix_orders_user_id" ON "order_facts" ("user_id", "id");
CREATE INDEX "ix_orders_dispatched_by_deadline" ON "order_state" ("result_deadline") WHERE version = 2;
CREATE INDEX "ix_orders_pending_by_partner" ON "order_state" ("partner_id") WHERE version < 3;
CREATE INDEX "ix_orders_unsettled_ids" ON "order_state" ("id") WHERE settled_at IS NULL;
-- Every order has both rows, written in one transaction. The state leads the join: a read of
-- state columns only leaves the facts out.
CREATE VIEW "orders" AS
  SELECT s."id", f."user_id", f."request_id", s."partner_id", f."product", f."amount_minor", f."currency", f."items", f."payload", s."status", s."version", s."result_deadline", s."settled_at", f."created_at", s."updated_at", s."dispatched_at", s."result_stored_at", s."notified_at", s."late_result_stored_at", s."late_notified_at"
  FROM "order_state" s LEFT JOIN "order_facts" f ON f."id" = s."id";
