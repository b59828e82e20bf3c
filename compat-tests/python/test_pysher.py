"""pysher (Python WebSocket client) subscribing to channels and receiving
events published with the Python server SDK.

The SDK talks to node A; a client that receives what it (or another client) sends is on
node B (clients(port=PORT_B); node A outside cluster mode)."""
import json
import re
import threading
import time

from conftest import PORT_B, SECRET, WAIT, needs_client_events, uniq


def test_pysher_connects_with_a_valid_socket_id(clients):
    c = clients()
    assert re.match(r"^\d+\.\d+$", c.socket_id)
    assert c.pusher.connection.state == "connected"


def test_public_channel_receives_sdk_trigger(clients, sdk):
    c = clients(port=PORT_B)
    name = uniq("py-public")
    channel, data = c.subscribe(name)
    assert data == "{}"
    got = threading.Event()
    received = []

    def handler(payload):
        received.append(payload)
        got.set()

    channel.bind("price-update", handler)
    assert sdk.trigger(name, "price-update", {"symbol": "PSH", "price": 1.5}) == {}
    assert got.wait(WAIT), "event not received"
    # The SDK JSON-encodes with Python's default separators; delivered verbatim.
    assert received == [json.dumps({"symbol": "PSH", "price": 1.5})]
    assert json.loads(received[0]) == {"symbol": "PSH", "price": 1.5}


def test_private_channel_with_sdk_authenticate(clients, sdk):
    c = clients(port=PORT_B)
    name = uniq("private-py")
    auth = sdk.authenticate(channel=name, socket_id=c.socket_id)
    assert set(auth) == {"auth"}
    _, data = c.subscribe(name, auth=auth["auth"])
    assert data == "{}"
    sdk.trigger(name, "secret", "payload")
    _, _, payload = c.wait_event("secret", name)
    assert payload == "payload"


def test_private_channel_signed_locally_by_pysher(clients, sdk):
    c = clients(secret=SECRET)
    name = uniq("private-py-local")
    _, data = c.subscribe(name)
    assert data == "{}"


def test_private_channel_with_a_wrong_secret_is_refused(clients):
    c = clients(secret="wrong-secret")
    name = uniq("private-py-bad")
    c.pusher.subscribe(name)
    _, event, data = c.wait(lambda ch, e, d: ch == name and e.startswith("pusher"), what="subscription result")
    assert event == "pusher:subscription_error"
    body = json.loads(data)
    assert body["type"] == "AuthError"
    assert body["status"] == 401
    err = c.errors.get(timeout=WAIT)
    assert err["code"] is None
    assert c.pusher.connection.state == "connected"


def test_presence_channel_signed_locally_with_spaced_channel_data(clients, sdk):
    # pysher serialises user_data with json.dumps (spaces after separators): the
    # server must verify the signature over the bytes it received.
    alice = clients(user_data={"user_id": "alice", "user_info": {"name": "Alice"}})
    name = uniq("presence-py")
    _, data = alice.subscribe(name)
    presence = json.loads(data)["presence"]
    assert presence == {"ids": ["alice"], "hash": {"alice": {"name": "Alice"}}, "count": 1}

    bob = clients(user_data={"user_id": "bob", "user_info": {"name": "Bob"}}, port=PORT_B)
    _, data = bob.subscribe(name)
    presence = json.loads(data)["presence"]
    assert presence["count"] == 2
    assert sorted(presence["ids"]) == ["alice", "bob"]

    _, _, added = alice.wait_event("pusher_internal:member_added", name)
    assert json.loads(added) == {"user_id": "bob", "user_info": {"name": "Bob"}}

    users = sdk.users_info(name)
    assert sorted(u["id"] for u in users["users"]) == ["alice", "bob"]

    bob.close()
    _, _, removed = alice.wait_event("pusher_internal:member_removed", name)
    assert json.loads(removed) == {"user_id": "bob"}


def test_presence_channel_with_sdk_authenticate_custom_data(clients, sdk):
    c = clients()
    name = uniq("presence-py-sdk")
    auth = sdk.authenticate(channel=name, socket_id=c.socket_id, custom_data={"user_id": 42, "user_info": {"n": 1}})
    assert set(auth) == {"auth", "channel_data"}
    _, event, data = c.subscribe_raw(name, auth["auth"], auth["channel_data"])
    assert event == "pusher_internal:subscription_succeeded", data
    assert json.loads(data)["presence"] == {"ids": ["42"], "hash": {"42": {"n": 1}}, "count": 1}
    info = sdk.channel_info(name, ["user_count"])
    assert info == {"occupied": True, "user_count": 1}


def test_sdk_trigger_excludes_socket_id(clients, sdk):
    a = clients(port=PORT_B)
    b = clients(port=PORT_B)
    name = uniq("py-exclude")
    a.subscribe(name)
    b.subscribe(name)
    sdk.trigger(name, "for-b", {"x": 1}, socket_id=a.socket_id)
    b.wait_event("for-b", name)
    sdk.trigger(name, "for-all", {"x": 2})
    a.wait_event("for-all", name)
    a.expect_none(lambda ch, e, d: e == "for-b", what="excluded socket received the event")


def test_sdk_trigger_batch_reaches_pysher(clients, sdk):
    c = clients(port=PORT_B)
    one = uniq("py-batch")
    two = uniq("private-py-batch")
    c.subscribe(one)
    c.subscribe(two, auth=sdk.authenticate(channel=two, socket_id=c.socket_id)["auth"])
    result = sdk.trigger_batch(
        [
            {"channel": one, "name": "b1", "data": {"n": 1}},
            {"channel": two, "name": "b2", "data": "two"},
        ]
    )
    assert result == {}
    assert json.loads(c.wait_event("b1", one)[2]) == {"n": 1}
    assert c.wait_event("b2", two)[2] == "two"


def test_unsubscribe_stops_delivery(clients, sdk):
    c = clients(port=PORT_B)
    gone = uniq("py-gone")
    kept = uniq("py-kept")
    c.subscribe(gone)
    c.subscribe(kept)
    c.pusher.unsubscribe(gone)
    # Unsubscribe has no reply; wait until the server shows the channel vacated.
    deadline = time.time() + WAIT
    while sdk.channel_info(gone)["occupied"] and time.time() < deadline:
        time.sleep(0.05)
    assert sdk.channel_info(gone) == {"occupied": False}
    sdk.trigger([gone, kept], "after", "x")
    c.wait_event("after", kept)
    c.expect_none(lambda ch, e, d: e == "after", what="event on an unsubscribed channel")


@needs_client_events
def test_pysher_client_events_on_private_channel(clients, sdk):
    a = clients()
    b = clients(port=PORT_B)
    name = uniq("private-py-chat")
    chan_a, _ = a.subscribe(name, auth=sdk.authenticate(channel=name, socket_id=a.socket_id)["auth"])
    b.subscribe(name, auth=sdk.authenticate(channel=name, socket_id=b.socket_id)["auth"])
    chan_a.trigger("client-typing", {"who": "a"})
    _, _, data = b.wait_event("client-typing", name)
    # Object data is forwarded verbatim (pysher hands over the parsed object).
    assert data == {"who": "a"}
    sdk.trigger(name, "control", "x")
    a.wait_event("control", name)
    a.expect_none(lambda ch, e, d: e == "client-typing", what="client event echoed to sender")


@needs_client_events
def test_pysher_client_event_on_presence_carries_user_id(clients):
    name = uniq("presence-py-chat")
    a = clients(user_data={"user_id": "ann", "user_info": {}})
    b = clients(user_data={"user_id": "bo", "user_info": {}}, port=PORT_B)
    chan_a, _ = a.subscribe(name)
    b.subscribe(name)
    chan_a.trigger("client-hi", "hello")
    _, _, data = b.wait_event("client-hi", name)
    assert data == "hello"
    frame = next(f for f in b.raw if isinstance(f, dict) and f.get("event") == "client-hi")
    assert frame == {"event": "client-hi", "channel": name, "data": "hello", "user_id": "ann"}


def test_pysher_survives_ping_with_empty_string_data(clients, sdk):
    # pysher sends {"event":"pusher:ping","data":""} on open; the connection stays usable.
    c = clients(port=PORT_B)
    c.pusher.connection.send_ping()
    name = uniq("py-after-ping")
    c.subscribe(name)
    sdk.trigger(name, "ok", "1")
    c.wait_event("ok", name)
    assert c.pusher.connection.state == "connected"
