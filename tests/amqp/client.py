#!/usr/bin/env python3
"""Small python-qpid-proton (Qpid Proton, Apache-2.0) clients driven by tests/amqp_clients.rs.

Usage: client.py URL SCENARIO [ARGS...]; prints one JSON object per line (what it received or
what happened) and exits 0, or prints the failure and exits 1. Uses only the blocking API.
"""
import json
import sys

from proton import Delivery, Message
from proton.utils import BlockingConnection
from proton import Timeout


def body(m):
    """The body as text (proton hands a memoryview into the message: copy it while m lives)."""
    return bytes(m.body).decode("latin-1")


def out(obj):
    print(json.dumps(obj), flush=True)


def props(m):
    return {
        "body": body(m),
        "subject": m.subject,
        "id": str(m.id) if m.id is not None else None,
        "correlation_id": str(m.correlation_id) if m.correlation_id is not None else None,
        "priority": m.priority,
        "durable": m.durable,
        "reply_to": m.reply_to,
        "address": m.address,
        "delivery_count": m.delivery_count,
        "app": {k: (v.hex() if isinstance(v, bytes) else v) for k, v in (m.properties or {}).items()},
        "annotations": {str(k): v for k, v in (m.annotations or {}).items()},
    }


def accepted_on(api, shard):
    """lior_shard_connections_accepted_total of `shard`, from lior's /metrics at `api`."""
    import urllib.request
    text = urllib.request.urlopen("http://%s/metrics" % api, timeout=10).read().decode()
    key = 'lior_shard_connections_accepted_total{shard="%s"} ' % shard
    for line in text.splitlines():
        if line.startswith(key):
            return int(line[len(key):])
    return 0


def connect(url):
    """A connection; with LIOR_SHARD and LIOR_API set, one the kernel gave to that shard of
    lior (connects until one lands there; nothing else connects meanwhile in the tests)."""
    import os
    shard, api = os.environ.get("LIOR_SHARD"), os.environ.get("LIOR_API")
    if shard is None or api is None:
        return BlockingConnection(url, timeout=20)
    for _ in range(64):
        before = accepted_on(api, shard)
        conn = BlockingConnection(url, timeout=20)
        if accepted_on(api, shard) > before:
            return conn
        conn.close()
    raise SystemExit("no connection reached shard %s" % shard)


def main():
    url, scenario, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if scenario == "sasl":
        # sasl USER PASSWORD QUEUE: log in with PLAIN and send one message
        user, password, q = args
        try:
            conn = BlockingConnection(url, timeout=20, user=user, password=password,
                                      allowed_mechs="PLAIN")
            conn.create_sender(q).send(Message(body=b"x", durable=True))
            conn.close()
            out({"error": None})
        except Exception as e:  # noqa: BLE001
            out({"error": "%s: %s" % (type(e).__name__, e)})
        return
    conn = connect(url)

    if scenario == "send":
        # send QUEUE N [durable] [subject] [priority] [app_specific]
        q, n = args[0], int(args[1])
        durable = len(args) < 3 or args[2] == "durable"
        s = conn.create_sender(q)
        for i in range(n):
            m = Message(body=("msg-%d" % i).encode(), durable=durable)
            if len(args) > 3:
                m.subject = args[3]
            if len(args) > 4:
                m.priority = int(args[4])
            if len(args) > 5:
                m.properties = {"msmq.AppSpecific": int(args[5])}
            s.send(m)  # waits for the settlement: raises unless accepted
        out({"sent": n})
    elif scenario == "send-big":
        q, size = args[0], int(args[1])
        s = conn.create_sender(q)
        s.send(Message(body=bytes([i % 251 for i in range(size)]), durable=True))
        out({"sent": 1})
    elif scenario == "send-expect-error":
        q = args[0]
        try:
            s = conn.create_sender(q)
            s.send(Message(body=b"x", durable=True))
            out({"error": None})
        except Exception as e:  # noqa: BLE001 - report whatever the client raised
            out({"error": "%s: %s" % (type(e).__name__, e)})
    elif scenario == "receive":
        # receive QUEUE N [credit]: accepts each
        q, n = args[0], int(args[1])
        credit = int(args[2]) if len(args) > 2 else 10
        r = conn.create_receiver(q, credit=credit)
        for _ in range(n):
            m = r.receive(timeout=20)
            out(props(m))
            r.accept()
    elif scenario == "receive-expect-error":
        try:
            r = conn.create_receiver(args[0], credit=1)
            r.receive(timeout=5)
            out({"error": None})
        except Exception as e:  # noqa: BLE001
            out({"error": "%s: %s" % (type(e).__name__, e)})
    elif scenario == "outcomes":
        # One message: released (comes back as it was), modified with delivery-failed (comes
        # back with delivery-count 1), then rejected (goes to the dead-letter queue).
        q = args[0]
        r = conn.create_receiver(q, credit=1)
        for step in ("release", "modify", "reject"):
            m = r.receive(timeout=20)
            out({"step": step, "body": body(m), "delivery_count": m.delivery_count})
            if step == "release":
                r.release(delivered=False)
            elif step == "modify":
                for d in r.fetcher.unsettled:
                    d.local.failed = True
                r.settle(Delivery.MODIFIED)
            else:
                r.reject()
    elif scenario == "hold":
        # hold QUEUE N: receive N without settling, print them, then stay (killed by the test)
        # Exactly n credits: `credit=n` would also let proton's prefetch top the link up while
        # receive() waits (more than n arrive when the first ones come a turn later, as from a
        # queue another shard owns), so grant them by hand and take what came.
        q, n = args[0], int(args[1])
        r = conn.create_receiver(q, credit=0)
        r.link.flow(n)
        conn.wait(lambda: r.fetcher.has_message >= n, timeout=20)
        for _ in range(n):
            m = r.fetcher.pop()
            out({"body": body(m)})
        out({"holding": n})
        import time
        time.sleep(60)
    elif scenario == "two-consumers":
        # two receivers of one queue, unsettled, each with credit N: every message goes to
        # exactly one of them (whoever has credit first), none twice
        q, n = args[0], int(args[1])
        r1 = conn.create_receiver(q, credit=n, name="first")
        r2 = conn.create_receiver(q, credit=n, name="second")
        seen = {"first": [], "second": []}
        for name, r in (("first", r1), ("second", r2)):
            while True:
                try:
                    m = r.receive(timeout=2)
                except Timeout:
                    break
                seen[name].append(body(m))
        out(seen)
    elif scenario == "browse":
        from proton.reactor import Copy
        q, n = args[0], int(args[1])
        r = conn.create_receiver(q, credit=n, options=Copy())
        got = []
        for _ in range(n):
            m = r.receive(timeout=20)
            got.append(body(m))
        out({"browsed": got})
    elif scenario == "presettled":
        # presettled QUEUE N: an at-most-once receiver (snd-settle-mode settled)
        from proton.reactor import AtMostOnce
        q, n = args[0], int(args[1])
        r = conn.create_receiver(q, credit=n, options=AtMostOnce())
        got = []
        for _ in range(n):
            m = r.receive(timeout=20)
            got.append(body(m))
        out({"got": got})
    elif scenario == "receive-big":
        r = conn.create_receiver(args[0], credit=1)
        m = r.receive(timeout=30)
        b = bytes(m.body)
        ok = all(b[i] == i % 251 for i in range(len(b)))
        out({"len": len(b), "pattern": ok})
        r.accept()
    elif scenario == "credit":
        # credit QUEUE: a receiver granting 2 credits gets exactly 2 messages; a second one on
        # the same queue gets the rest (the first two are held, unsettled)
        q = args[0]
        r1 = conn.create_receiver(q, credit=0, name="two-credits")
        r1.link.flow(2)
        try:
            conn.wait(lambda: r1.fetcher.has_message > 2, timeout=2)
        except Timeout:
            pass
        first = r1.fetcher.has_message
        r2 = conn.create_receiver(q, credit=10, name="the-rest")
        rest = []
        while True:
            try:
                m = r2.receive(timeout=2)
            except Timeout:
                break
            rest.append(body(m))
            r2.accept()
        out({"first": first, "rest": rest})
    else:
        raise SystemExit("unknown scenario " + scenario)
    conn.close()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"exception": "%s: %s" % (type(e).__name__, e)}), flush=True)
        sys.exit(1)
