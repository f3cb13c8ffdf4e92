#!/usr/bin/env python3
"""python-qpid-proton (Apache-2.0) over AMQPS, driven by tests/tls_doors.rs.

Usage: tls_client.py URL CA_PEM SCENARIO [ARGS...]; prints one JSON object per line and exits 0,
or prints the failure and exits 1. The server certificate is verified against CA_PEM for the
name "localhost" (VERIFY_PEER_NAME, sent as SNI).

Scenarios: send QUEUE BODY | receive QUEUE | untrusted QUEUE (verification must fail).
"""
import json
import sys

from proton import Message, SSLDomain
from proton.utils import BlockingConnection


def out(obj):
    print(json.dumps(obj), flush=True)


def connect(url, ca):
    domain = SSLDomain(SSLDomain.MODE_CLIENT)
    if ca != "-":
        domain.set_trusted_ca_db(ca)
    domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
    return BlockingConnection(url, timeout=20, ssl_domain=domain, sni="localhost")


def main():
    url, ca, scenario, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    if scenario == "send":
        q, text = args
        conn = connect(url, ca)
        conn.create_sender(q).send(Message(body=text.encode(), durable=True, subject="over tls"))
        conn.close()
        out({"sent": text})
    elif scenario == "receive":
        (q,) = args
        conn = connect(url, ca)
        r = conn.create_receiver(q)
        m = r.receive(timeout=20)
        r.accept()
        conn.close()
        out({"body": bytes(m.body).decode("latin-1"), "subject": m.subject})
    elif scenario == "untrusted":
        (q,) = args
        try:
            conn = connect(url, ca)
            conn.create_sender(q).send(Message(body=b"x"))
            conn.close()
            out({"error": None})
        except Exception as e:  # noqa: BLE001
            out({"error": "%s: %s" % (type(e).__name__, e)})
    else:
        raise SystemExit("unknown scenario " + scenario)


if __name__ == "__main__":
    main()
