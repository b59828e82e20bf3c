"""Webhooks (PUSHER-SPEC 4) of fixture app 6, validated with the Python SDK's
validate_webhook, which also rejects a time_ms more than 300 s from now."""
import http.server
import json
import os
import queue
import threading
import time

import pytest

from conftest import FULL, WAIT, make_sdk, uniq

WEBHOOK_PORT = os.environ.get("PUSHI_WEBHOOK_PORT")
APP_ID, KEY, SECRET = "6", "webhook-key", "webhook-secret"
REMOVAL_DELAY = 3.0  # pushi holds channel_vacated back for 3 s

needs_webhooks = pytest.mark.skipif(
    not (FULL and WEBHOOK_PORT),
    reason="needs the webhook fixture app 6 and PUSHI_WEBHOOK_PORT "
    "(set by compat-tests/run; not available in --target mode)",
)


class Receiver:
    """An HTTP server on the webhook port that records every POST (header names
    lowercased) and answers 200."""

    def __init__(self, port):
        self.requests = queue.Queue()
        self.pending = []
        received = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                received.put((self.path, headers, body.decode("utf-8"), time.time()))
                out = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, pred, timeout, what):
        """Returns (and consumes) the first request (path, headers, body, at) matching pred."""
        for i, r in enumerate(self.pending):
            if pred(*r):
                return self.pending.pop(i)
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError("timed out waiting for %s; other requests: %r" % (what, self.pending))
            try:
                r = self.requests.get(timeout=left)
            except queue.Empty:
                continue
            if pred(*r):
                return r
            self.pending.append(r)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver(int(WEBHOOK_PORT))
    yield r
    r.close()


def about(channel, name):
    def pred(path, headers, body, at):
        try:
            events = json.loads(body)["events"]
        except (ValueError, KeyError, TypeError):
            return False
        return any(e.get("channel") == channel and e.get("name") == name for e in events)

    return pred


@needs_webhooks
def test_validate_webhook_accepts_pushi_webhooks(receiver, clients):
    sdk = make_sdk(app_id=APP_ID, key=KEY, secret=SECRET)
    ch = uniq("py-wh")
    c = clients(key=KEY, secret=SECRET)
    c.subscribe(ch)

    path, headers, body, at = receiver.wait(about(ch, "channel_occupied"), WAIT, "channel_occupied")
    assert path == "/all"
    assert headers["content-type"] == "application/json"
    data = sdk.validate_webhook(key=headers["x-pusher-key"], signature=headers["x-pusher-signature"], body=body)
    assert data is not None, "validate_webhook rejected %r" % body
    assert abs(data["time_ms"] - at * 1000) < 5000
    mine = [e for e in data["events"] if e.get("channel") == ch]
    assert mine == [
        {"name": "channel_occupied", "channel": ch},
        {"name": "subscription_count", "channel": ch, "subscription_count": 1},
    ]
    # The same request with a changed body, another key or another secret is refused.
    assert sdk.validate_webhook(key=KEY, signature=headers["x-pusher-signature"], body=body.replace(ch, ch + "x")) is None
    assert sdk.validate_webhook(key="other-key", signature=headers["x-pusher-signature"], body=body) is None
    other = make_sdk(app_id=APP_ID, key=KEY, secret="other-secret")
    assert other.validate_webhook(key=KEY, signature=headers["x-pusher-signature"], body=body) is None

    # channel_vacated, about 3 s after leaving, on the filtered webhook too.
    left = time.time()
    c.close()
    path, headers, body, at = receiver.wait(
        lambda p, h, b, a: p == "/vacated" and about(ch, "channel_vacated")(p, h, b, a),
        REMOVAL_DELAY + WAIT,
        "channel_vacated on /vacated",
    )
    assert at - left >= REMOVAL_DELAY - 0.2
    data = sdk.validate_webhook(key=headers["x-pusher-key"], signature=headers["x-pusher-signature"], body=body)
    assert data is not None
    assert {e["name"] for e in data["events"]} == {"channel_vacated"}
    assert {"name": "channel_vacated", "channel": ch} in data["events"]
