-- Each auxiliary system's record of an order.
CREATE TABLE IF NOT EXISTS "aux_records" ( "order_id" varchar NOT NULL, "system" varchar NOT NULL, "status" varchar NOT NULL, "data" jsonb_text NOT NULL, "updated_at" timestamp_with_timezone_text NOT NULL, CONSTRAINT "pk-aux_records" PRIMARY KEY ("order_id", "system") );
