"""pushi's extensions with the stock Python server SDK (its generic signed request,
`pusher.http.Request`) and a pysher client: offline subscriptions, stored events, the
personal channel with its replay and `since` recovery. The SDK talks to node A, the pysher
client that receives the live event is on node B (node A outside cluster mode)."""
import json

import pytest
from pusher.errors import PusherBadRequest
from pusher.http import GET, POST, Request

from conftest import APP_ID, FULL, PORT_B, make_sdk, uniq

pytestmark = pytest.mark.skipif(not FULL, reason="the pushi extensions (fixture config only)")


def call(method, path, params=None):
    """The SDK's own signed request to /apps/{app_id}/{path}."""
    client = make_sdk()._pusher_client
    return client.http.send_request(Request(client, method, "/apps/%s/%s" % (APP_ID, path), params or {}))


def offline(route, user, channel):
    assert call(POST, route, {"user_id": user, "event": channel}) == {}


def test_sdk_subscribes_lists_and_reads_stored_events():
    sdk = make_sdk()
    user = uniq("py-user")
    a, b = uniq("py-a"), uniq("py-b")
    offline("subscribe", user, a)
    assert call(POST, "subscribe", {"user_id": user, "channel": b}) == {}
    sdk.trigger(a, "first", {"n": 1})
    sdk.trigger(b, "second", "two")
    sdk.trigger(uniq("py-other"), "elsewhere", "x")
    assert sorted(call(GET, "users/%s/subscriptions" % user)["channels"]) == sorted([a, b])
    events = call(GET, "users/%s/events" % user)["events"]
    assert [e["event"] for e in events] == ["second", "first"]
    assert json.loads(events[1]["data"]) == {"n": 1}
    assert events[1]["channel"] == a
    page = call(GET, "users/%s/events" % user, {"before": str(events[0]["id"]), "limit": "1"})["events"]
    assert [e["event"] for e in page] == ["first"]
    offline("unsubscribe", user, a)
    sdk.trigger(a, "after", "x")
    assert call(GET, "users/%s/subscriptions" % user)["channels"] == [b]
    assert [e["event"] for e in call(GET, "users/%s/events" % user)["events"]] == ["second", "first"]
    # A user never seen has nothing; bad input is a 400 the SDK raises.
    assert call(GET, "users/%s/events" % uniq("nobody")) == {"events": []}
    with pytest.raises(PusherBadRequest):
        call(GET, "users/%s/events" % user, {"limit": "x"})
    with pytest.raises(PusherBadRequest):
        call(POST, "subscribe", {"user_id": user, "event": "private-personal-%s" % user})


def test_personal_channel_replay_and_since_with_pysher(clients):
    sdk = make_sdk()
    user = uniq("py-reader")
    feed = uniq("py-feed")
    personal = "private-personal-%s" % user
    offline("subscribe", user, feed)
    for i in range(3):
        sdk.trigger(feed, "old-%d" % i, str(i))

    c = clients(port=PORT_B)
    auth = sdk.authenticate(personal, c.socket_id)["auth"]
    _, event, data = c.subscribe_raw(personal, auth, None)
    assert event == "pusher_internal:subscription_succeeded"
    replay = json.loads(data)
    assert replay["channels"] == [feed]
    assert [e["event"] for e in replay["events"]] == ["old-0", "old-1", "old-2"]
    cursor = replay["events"][-1]["id"]
    sdk.trigger(feed, "live", "now")
    c.wait_event("live", personal)

    # Recovery: everything after the cursor, exactly once.
    d = clients()
    since = json.dumps({"since": cursor})
    auth = sdk.authenticate(personal, d.socket_id, custom_data={"since": cursor})
    assert auth["channel_data"] == since
    _, event, data = d.subscribe_raw(personal, auth["auth"], auth["channel_data"])
    assert event == "pusher_internal:subscription_succeeded"
    assert [e["event"] for e in json.loads(data)["events"]] == ["live"]
