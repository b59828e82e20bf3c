"""Shared fixtures for the Python SDK compatibility suite.

Connection parameters come from the environment exported by compat-tests/run.
A JSON summary is written to $COMPAT_SUMMARY for run to aggregate.
"""
import base64
import json
import logging
import os
import queue
import secrets
import time
import uuid

import pusher
import pysher
import pytest

HOST = os.environ["PUSHI_HOST"]
PORT = int(os.environ["PUSHI_PORT"])
# Cluster mode (compat-tests/run --cluster): PUSHI_PORT is node A, PUSHI_PORT_B a second node
# of the same cluster. Tests open their receiving client there (clients(port=PORT_B)), so
# that what they check crosses nodes; without it (default and --target mode) node B is
# node A.
PORT_B = int(os.environ.get("PUSHI_PORT_B") or PORT)
CLUSTER = os.environ.get("PUSHI_CLUSTER") == "1"
APP_ID = os.environ["PUSHI_APP_ID"]
KEY = os.environ["PUSHI_KEY"]
SECRET = os.environ["PUSHI_SECRET"]
FULL = os.environ.get("PUSHI_FULL") == "1"
CLIENT_EVENTS = FULL or os.environ.get("PUSHI_CLIENT_EVENTS") == "1"
SUBSCRIPTION_COUNT = FULL or os.environ.get("PUSHI_SUBSCRIPTION_COUNT") == "1"

WAIT = 5.0  # bounded wait for anything that should arrive
QUIET = 0.4  # bounded wait for "nothing arrives", after a positive control

MASTER_KEY_B64 = base64.b64encode(secrets.token_bytes(32)).decode()

# The app compat-tests/run creates with `pushi apps create --json` in the MongoDB registry
# (client events on); default mode only.
REGISTRY_APP_ID = os.environ.get("PUSHI_REGISTRY_APP_ID")
REGISTRY_KEY = os.environ.get("PUSHI_REGISTRY_APP_KEY")
REGISTRY_SECRET = os.environ.get("PUSHI_REGISTRY_APP_SECRET")
REGISTRY = bool(REGISTRY_APP_ID and REGISTRY_KEY and REGISTRY_SECRET)

needs_registry = pytest.mark.skipif(
    not REGISTRY,
    reason="needs the MongoDB registry app (PUSHI_REGISTRY_APP_*, created by compat-tests/run;"
    " not available in --target mode)",
)
needs_client_events = pytest.mark.skipif(
    not CLIENT_EVENTS, reason="needs client events enabled on the target app (pass --client-events)"
)
needs_subscription_count = pytest.mark.skipif(
    not SUBSCRIPTION_COUNT, reason="needs subscription_count enabled on the target app (pass --subscription-count)"
)


def uniq(prefix):
    return "%s-py-%s" % (prefix, uuid.uuid4().hex[:10])


def make_sdk(app_id=APP_ID, key=KEY, secret=SECRET, port=PORT):
    """The Python server SDK on node A (or on `port`, e.g. PORT_B)."""
    return pusher.Pusher(
        app_id=app_id,
        key=key,
        secret=secret,
        ssl=False,
        host=HOST,
        port=port,
        timeout=5,
        encryption_master_key_base64=MASTER_KEY_B64,
    )


@pytest.fixture
def sdk():
    return make_sdk()


class Client:
    """A pysher client plus a queue of every channel frame it receives.

    pysher drops frames for a channel until its Channel object exists, which it
    creates only after sending the subscribe; recording at the connection
    level makes subscription confirmations race-free.
    """

    def __init__(self, key=KEY, secret=SECRET, user_data=None, port=PORT, ca=None):
        """`port`: the node to connect to (PORT_B for node B; default node A).

        `ca`: a CA file: connect over wss:// to localhost, trusting that CA.
        """
        self.frames = queue.Queue()
        self.errors = queue.Queue()
        self.pusher = pysher.Pusher(
            key,
            custom_host="localhost" if ca else HOST,
            port=port,
            secure=bool(ca),
            secret=secret,
            user_data=user_data,
            log_level=logging.WARNING,
        )
        conn = self.pusher.connection
        if ca:
            # websocket-client's run_forever options, which pysher passes on.
            conn.socket_kwargs["sslopt"] = {"ca_certs": ca}
        original = conn.event_handler

        def record(event, data, channel):
            self.frames.put((channel, event, data))
            original(event, data, channel)

        conn.event_handler = record

        # Every raw frame too, for fields pysher does not pass on (e.g. user_id).
        self.raw = []
        on_message = conn._on_message

        def record_raw(*args):
            try:
                self.raw.append(json.loads(args[-1]))
            except ValueError:
                self.raw.append(args[-1])
            on_message(*args)

        conn._on_message = record_raw
        conn.bind("pusher:error", lambda data: self.errors.put(data))
        self.pending = []

    def connect(self):
        self.pusher.connect()
        deadline = time.time() + WAIT
        while time.time() < deadline:
            if self.pusher.connection.state == "connected" and self.pusher.connection.socket_id:
                return self
            time.sleep(0.02)
        raise AssertionError("pysher did not connect (state %s)" % self.pusher.connection.state)

    @property
    def socket_id(self):
        return self.pusher.connection.socket_id

    def wait(self, pred, timeout=WAIT, what="frame"):
        """Returns (and consumes) the first frame (channel, event, data) matching pred."""
        for i, f in enumerate(self.pending):
            if pred(*f):
                return self.pending.pop(i)
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError("timed out waiting for %s; unmatched: %r" % (what, self.pending))
            try:
                f = self.frames.get(timeout=left)
            except queue.Empty:
                continue
            if pred(*f):
                return f
            self.pending.append(f)

    def wait_event(self, event, channel, timeout=WAIT):
        return self.wait(lambda c, e, d: c == channel and e == event, timeout, "%s on %s" % (event, channel))

    def expect_none(self, pred, wait=QUIET, what="unexpected frame"):
        time.sleep(wait)
        while True:
            try:
                self.pending.append(self.frames.get_nowait())
            except queue.Empty:
                break
        bad = [f for f in self.pending if pred(*f)]
        assert not bad, "%s: %r" % (what, bad)

    def subscribe(self, channel, auth=None):
        ch = self.pusher.subscribe(channel, auth=auth)
        _, _, data = self.wait(
            lambda c, e, d: c == channel
            and e in ("pusher_internal:subscription_succeeded", "pusher:subscription_error"),
            what="subscription result for %s" % channel,
        )
        return ch, data

    def subscribe_raw(self, channel, auth, channel_data):
        """Subscribes with an externally produced presence auth (pysher only sends
        channel_data when it signs locally)."""
        from pysher.channel import Channel

        self.pusher.channels[channel] = Channel(channel, self.pusher.connection)
        self.pusher.connection.send_event(
            "pusher:subscribe", {"channel": channel, "auth": auth, "channel_data": channel_data}
        )
        _, event, data = self.wait(
            lambda c, e, d: c == channel
            and e in ("pusher_internal:subscription_succeeded", "pusher:subscription_error"),
            what="subscription result for %s" % channel,
        )
        return self.pusher.channels[channel], event, data

    def close(self):
        try:
            self.pusher.disconnect(timeout=2)
        except Exception:
            pass


@pytest.fixture
def clients():
    """Factory for connected pysher clients, all disconnected after the test.

    clients(port=PORT_B) opens one on node B (node A outside cluster mode).
    """
    made = []

    def factory(**kwargs):
        c = Client(**kwargs)
        made.append(c)
        return c.connect()

    yield factory
    for c in made:
        c.close()


# ---- summary for compat-tests/run ----

_outcomes = {}


def pytest_runtest_logreport(report):
    # One outcome per test: any failing phase fails it.
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.skipped:
        _outcomes.setdefault(report.nodeid, "skipped")
    elif report.passed and report.when == "call":
        _outcomes.setdefault(report.nodeid, "passed")


def pytest_sessionfinish(session, exitstatus):
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for outcome in _outcomes.values():
        counts[outcome] += 1
    path = os.environ.get("COMPAT_SUMMARY")
    if path:
        with open(path, "w") as f:
            json.dump(counts, f)
