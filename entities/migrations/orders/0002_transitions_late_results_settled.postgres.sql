-- The order's whole story: each transition's time, the late result, and when it settled; and the
-- index behind the partners' pending counts.
CREATE TABLE IF NOT EXISTS "order_transitions" ( "order_id" varchar NOT NULL, "version" integer NOT NULL, "status" varchar NOT NULL, "at" timestamp with time zone NOT NULL, CONSTRAINT "pk-order_transitions" PRIMARY KEY ("order_id", "version") );
CREATE TABLE IF NOT EXISTS "order_late_results" ( "order_id" varchar NOT NULL PRIMARY KEY, "result_id" varchar NOT NULL, "outcome" varchar NOT NULL, "partner_ref" varchar, "detail" jsonb NOT NULL, "received_at" timestamp with time zone NOT NULL );
ALTER TABLE "orders" ADD COLUMN IF NOT EXISTS "settled_at" timestamp with time zone NULL;
CREATE INDEX IF NOT EXISTS "ix_orders_unsettled" ON "orders" ("settled_at", "version");
CREATE INDEX IF NOT EXISTS "ix_orders_open" ON "orders" ("version", "partner_id");
