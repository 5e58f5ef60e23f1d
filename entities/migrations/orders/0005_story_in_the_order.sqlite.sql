-- The order's whole story in the order's own row: the time of each status as a column (filled from
-- order_transitions), and late results as rows of order_results (`late`), one of each per order.
ALTER TABLE "orders" ADD COLUMN "dispatched_at" timestamp_with_timezone_text;
ALTER TABLE "orders" ADD COLUMN "result_stored_at" timestamp_with_timezone_text;
ALTER TABLE "orders" ADD COLUMN "notified_at" timestamp_with_timezone_text;
ALTER TABLE "orders" ADD COLUMN "late_result_stored_at" timestamp_with_timezone_text;
ALTER TABLE "orders" ADD COLUMN "late_notified_at" timestamp_with_timezone_text;
UPDATE "orders" SET
  "dispatched_at" = (SELECT "at" FROM "order_transitions" t WHERE t."order_id" = "orders"."id" AND t."version" = 2),
  "result_stored_at" = (SELECT "at" FROM "order_transitions" t WHERE t."order_id" = "orders"."id" AND t."version" = 3),
  "notified_at" = (SELECT "at" FROM "order_transitions" t WHERE t."order_id" = "orders"."id" AND t."version" = 4),
  "late_result_stored_at" = (SELECT "at" FROM "order_transitions" t WHERE t."order_id" = "orders"."id" AND t."version" = 5),
  "late_notified_at" = (SELECT "at" FROM "order_transitions" t WHERE t."order_id" = "orders"."id" AND t."version" = 6)
WHERE "id" IN (SELECT "order_id" FROM "order_transitions" WHERE "version" > 1);
CREATE TABLE "order_results_0005" ( "order_id" varchar NOT NULL, "late" boolean NOT NULL, "result_id" varchar NOT NULL, "outcome" varchar NOT NULL, "partner_ref" varchar, "detail" jsonb_text NOT NULL, "received_at" timestamp_with_timezone_text NOT NULL, CONSTRAINT "pk-order_results" PRIMARY KEY ("order_id", "late") );
INSERT INTO "order_results_0005" ("order_id", "late", "result_id", "outcome", "partner_ref", "detail", "received_at")
  SELECT "order_id", FALSE, "result_id", "outcome", "partner_ref", "detail", "received_at" FROM "order_results";
INSERT INTO "order_results_0005" ("order_id", "late", "result_id", "outcome", "partner_ref", "detail", "received_at")
  SELECT "order_id", TRUE, "result_id", "outcome", "partner_ref", "detail", "received_at" FROM "order_late_results";
DROP TABLE "order_results";
ALTER TABLE "order_results_0005" RENAME TO "order_results";
DROP TABLE "order_late_results";
DROP TABLE "order_transitions";
