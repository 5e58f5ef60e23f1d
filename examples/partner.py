#!/usr/bin/env python3
"""A complete orderhub partner with nats-py (pip install nats-py).

It binds its durable consumer `partner-<id>` through the hub account's JetStream API prefix, and
for each stored event gets the order and posts a result. A hub that is away (no responders, a
timeout) or answers `unavailable` is retried after the suggested wait plus jitter, with the same
`result_id`, so a retry can only ever store the result once.

    python3 examples/partner.py --url nats://127.0.0.1:4222 --partner acme-air
    python3 examples/partner.py --orders 2      # stop after answering two orders

Prints one line per order and a JSON summary last. Payloads: docs/schemas/, docs/asyncapi.yaml.
"""

import argparse, asyncio, json, random, sys

import nats
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

JS_PREFIX = "JS.hub.API"  # every role but the hub reaches JetStream through this prefix
STREAM = "ORDER_EVENTS"
counts = {"orders": 0, "results": 0, "duplicates": 0, "retries": 0, "refused": 0}


def say(*parts):
    print(*parts, flush=True)


async def call(nc, subject, body):
    """A request, retried while the hub is away or `unavailable`; returns the decoded reply."""
    while True:
        try:
            msg = await nc.request(subject, json.dumps(body).encode(), timeout=5)
            reply = json.loads(msg.data)
            if reply.get("error", {}).get("code") != "unavailable":
                return reply
            wait_ms = int((msg.headers or {}).get("Orderhub-Retry-After-Ms", "500"))
            why = reply["error"]["message"]
        except (NoRespondersError, NatsTimeout) as e:
            wait_ms, why = 500, f"no hub answered ({type(e).__name__})"
        counts["retries"] += 1
        say(f"retry {subject} in {wait_ms} ms: {why}")
        await asyncio.sleep(wait_ms / 1000 * (1 + random.random() / 2))


async def handle(nc, partner, event, outcome):
    order_id = event["data"]["order_id"]
    got = await call(nc, f"orders.partner.{partner}.get", {"order_id": order_id})
    if "error" in got:  # not_found: not this partner's order (never expected); drop it
        counts["refused"] += 1
        say(f"order {order_id}: {got['error']['code']}: {got['error']['message']}")
        return
    order = got["order"]
    # ... fulfil the order here (book the seat, reserve the room) ...
    result = {"order_id": order_id, "result_id": f"{partner}-{order_id}", "outcome": outcome,
              "partner_ref": f"REF-{order_id[-6:].upper()}", "detail": {"product": order["product"]}}
    reply = await call(nc, f"orders.partner.{partner}.result", result)
    if "error" in reply:  # conflict: the order already has another result
        counts["refused"] += 1
        say(f"order {order_id}: {reply['error']['code']}: {reply['error']['message']}")
        return
    counts["results"] += 1
    counts["duplicates"] += reply["duplicate"]
    say(f"order {order_id}: {reply['status']}{' (duplicate)' if reply['duplicate'] else ''}")


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="nats://127.0.0.1:4222")
    ap.add_argument("--partner", default="acme-air")
    ap.add_argument("--password", help="default: the development password <user>-dev")
    ap.add_argument("--outcome", default="confirmed", choices=["confirmed", "rejected", "failed"])
    ap.add_argument("--orders", type=int, default=0, help="stop after this many orders (0: never)")
    args = ap.parse_args()
    user = f"partner-{args.partner}"
    nc = await nats.connect(args.url, user=user, password=args.password or f"{user}-dev",
                            inbox_prefix=f"_INBOX_{user}".encode(),  # the only inbox it may use
                            max_reconnect_attempts=-1)
    js = nc.jetstream(prefix=JS_PREFIX)
    sub = await js.pull_subscribe_bind(user, stream=STREAM)  # bind by name: no stream lookup
    say(f"{user}: bound to consumer {user}")
    while not args.orders or counts["orders"] < args.orders:
        try:
            msgs = await sub.fetch(10, timeout=5)  # a pull expires well under 2 minutes
        except NatsTimeout:
            continue
        for msg in msgs:
            event = json.loads(msg.data)
            if event.get("type") == "orderhub.order.stored":
                counts["orders"] += 1
                await handle(nc, args.partner, event, args.outcome)
            await msg.ack()  # after the result is stored: a crash before it means a redelivery
    say(json.dumps(counts))
    await nc.drain()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
