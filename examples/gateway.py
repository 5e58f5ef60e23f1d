#!/usr/bin/env python3
"""A complete orderhub user gateway with nats-py (pip install nats-py).

It submits orders for one user, follows them on its durable consumer `gateway` (bound through the
hub account's JetStream API prefix) until each has its result event and its settled event, and a
late event too when the hub closed it as `timeout`, then queries them. A submit answered
`unavailable` (the hub or the partner is saturated) or not answered at all is retried after the
suggested wait plus jitter with the same `request_id`, so it is stored once.

    python3 examples/gateway.py --url nats://127.0.0.1:4222 --user u-1001 \\
        --partners acme-air,globex-hotels

Prints one line per step and a JSON summary last. Payloads: docs/schemas/, docs/asyncapi.yaml.
"""

import argparse, asyncio, json, random, sys, time

import nats
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

JS_PREFIX = "JS.hub.API"
STREAM = "ORDER_EVENTS"
counts = {"submitted": 0, "unavailable": 0, "results": 0, "settled": 0, "late": 0, "queried": 0}


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
            counts["unavailable"] += 1
        except (NoRespondersError, NatsTimeout) as e:
            wait_ms, why = 500, f"no hub answered ({type(e).__name__})"
        say(f"unavailable: retry {subject} in {wait_ms} ms: {why}")
        await asyncio.sleep(wait_ms / 1000 * (1 + random.random() / 2))


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="nats://127.0.0.1:4222")
    ap.add_argument("--user", default="u-1001", help="the user the orders are placed for")
    ap.add_argument("--partners", default="acme-air", help="one order per comma-separated partner")
    ap.add_argument("--password", help="default: the development password gateway-dev")
    ap.add_argument("--wait", type=float, default=120, help="seconds to wait for the events")
    args = ap.parse_args()
    nc = await nats.connect(args.url, user="gateway", password=args.password or "gateway-dev",
                            inbox_prefix=b"_INBOX_gateway", max_reconnect_attempts=-1)
    sub = await nc.jetstream(prefix=JS_PREFIX).pull_subscribe_bind("gateway", stream=STREAM)

    run = f"{time.time_ns():x}"
    orders = {}  # order_id -> what we have seen of it
    for i, partner in enumerate(args.partners.split(",")):
        body = {"request_id": f"gw-{run}-{i}", "user_id": args.user, "partner_id": partner,
                "product": "flight", "amount_minor": 129900, "currency": "CNY",
                "items": [{"sku": "MU5101", "qty": 1}], "payload": {"seat": "12A"}}
        reply = await call(nc, "orders.submit", body)
        if "error" in reply:
            say(f"submit to {partner} refused: {reply['error']}")
            return 1
        orders[reply["order_id"]] = {"result": None, "settled": False, "late": False}
        counts["submitted"] += 1
        say(f"order {reply['order_id']} for {partner}: {reply['status']}")

    def done(o):
        return o["result"] and o["settled"] and (o["result"] != "timeout" or o["late"])

    deadline = time.monotonic() + args.wait
    while not all(done(o) for o in orders.values()):
        if time.monotonic() > deadline:
            say(f"gave up waiting: {orders}")
            return 1
        try:
            msgs = await sub.fetch(10, timeout=2)
        except NatsTimeout:
            continue
        for msg in msgs:
            event = json.loads(msg.data)
            data, mine = event["data"], orders.get(event["data"]["order_id"])
            # Delivery is at least once: an event seen before changes nothing.
            if mine is not None and event["type"] == "orderhub.order.result_stored":
                counts["results"] += mine["result"] is None
                mine["result"] = data["outcome"]
            elif mine is not None and event["type"] == "orderhub.order.settled":
                counts["settled"] += not mine["settled"]
                mine["settled"] = True
            elif mine is not None and event["type"] == "orderhub.order.late_result_stored":
                counts["late"] += not mine["late"]
                mine["late"] = True  # honour the booking or cancel it with the partner
            if mine is not None:
                say(f"event {event['type']} for {data['order_id']}: {data.get('outcome', '')}")
            await msg.ack()

    for order_id in orders:  # the details: pulled, never pushed
        q = await call(nc, "orders.query", {"order_id": order_id, "user_id": args.user})
        late = q["late_result"]["outcome"] if q["late_result"] else None
        say(f"query {order_id}: {q['order']['status']}, result {q['result']['outcome']}, "
            f"late {late}, aux {sorted(a['system'] for a in q['aux'])}")
        counts["queried"] += 1
    page = await call(nc, "orders.query", {"user_id": args.user, "limit": 100})
    counts["listed"] = len(page["orders"])
    say(json.dumps(counts))
    await nc.drain()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)
