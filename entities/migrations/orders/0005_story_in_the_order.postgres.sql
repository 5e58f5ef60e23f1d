-- The order's whole story in the order's own row: the time of each status as a column (filled from
-- order_transitions), and late results as rows of order_results (`late`), one of each per order.
ALTER TABLE "orders"
  ADD COLUMN "dispatched_at" timestamp with time zone NULL,
  ADD COLUMN "result_stored_at" timestamp with time zone NULL,
  ADD COLUMN "notified_at" timestamp with time zone NULL,
  ADD COLUMN "late_result_stored_at" timestamp with time zone NULL,
  ADD COLUMN "late_notified_at" timestamp with time zone NULL;
UPDATE "orders" o SET
  "dispatched_at" = (SELECT "at" FROM "order_transitions" t WHERE t."order_id" = o."id" AND t."version" = 2),
  "result_stored_at" = (SELECT "at" FROM "order_transitions" t WHERE t."order_id" = o."id" AND t."version" = 3),
  "notified_at" = (SELECT "at" FROM "order_transitions" t WHERE t."order_id" = o."id" AND t."version" = 4),
  "late_result_stored_at" = (SELECT "at" FROM "order_transitions" t WHERE t."order_id" = o."id" AND t."version" = 5),
  "late_notified_at" = (SELECT "at" FROM "order_transitions" t WHERE t."order_id" = o."id" AND t."version" = 6)
WHERE o."id" IN (SELECT "order_id" FROM "order_transitions" WHERE "version" > 1);
ALTER TABLE "order_results" ADD COLUMN "late" bool NOT NULL DEFAULT FALSE;
ALTER TABLE "order_results" ALTER COLUMN "late" DROP DEFAULT;
ALTER TABLE "order_results" DROP CONSTRAINT "order_results_pkey";
ALTER TABLE "order_results" ADD CONSTRAINT "pk-order_results" PRIMARY KEY ("order_id", "late");
INSERT INTO "order_results" ("order_id", "late", "result_id", "outcome", "partner_ref", "detail", "received_at")
  SELECT "order_id", TRUE, "result_id", "outcome", "partner_ref", "detail", "received_at" FROM "order_late_results";
DROP TABLE "order_late_results";
DROP TABLE "order_transitions";
