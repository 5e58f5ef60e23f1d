-- Orders, their results and the transactional outbox, with the submit idempotency key.
CREATE TABLE IF NOT EXISTS "orders" ( "id" varchar NOT NULL PRIMARY KEY, "user_id" varchar NOT NULL, "request_id" varchar NOT NULL, "partner_id" varchar NOT NULL, "product" varchar NOT NULL, "amount_minor" integer NOT NULL, "currency" varchar NOT NULL, "items" jsonb_text NOT NULL, "payload" jsonb_text NOT NULL, "status" varchar NOT NULL, "version" integer NOT NULL, "result_deadline" timestamp_with_timezone_text, "created_at" timestamp_with_timezone_text NOT NULL, "updated_at" timestamp_with_timezone_text NOT NULL );
CREATE TABLE IF NOT EXISTS "order_results" ( "order_id" varchar NOT NULL PRIMARY KEY, "result_id" varchar NOT NULL, "outcome" varchar NOT NULL, "partner_ref" varchar, "detail" jsonb_text NOT NULL, "received_at" timestamp_with_timezone_text NOT NULL );
CREATE TABLE IF NOT EXISTS "outbox" ( "id" varchar NOT NULL PRIMARY KEY, "order_id" varchar NOT NULL, "subject" varchar NOT NULL, "payload" text NOT NULL, "created_at" timestamp_with_timezone_text NOT NULL, "published_at" timestamp_with_timezone_text );
CREATE UNIQUE INDEX IF NOT EXISTS "ux_orders_user_request" ON "orders" ("user_id", "request_id");
CREATE INDEX IF NOT EXISTS "ix_orders_user_id" ON "orders" ("user_id", "id");
CREATE INDEX IF NOT EXISTS "ix_orders_deadline" ON "orders" ("status", "result_deadline");
CREATE INDEX IF NOT EXISTS "ix_outbox_unpublished" ON "outbox" ("published_at", "id");
