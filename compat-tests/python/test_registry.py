"""The MongoDB app registry: the app compat-tests/run creates with `pushi apps create --json`
works with the Python server SDK and a pysher client next to the fixture's [[apps]]. The SDK
talks to node A, the pysher clients are on node B (node A outside cluster mode), which loads
the same registry."""
import json

import pusher
import pytest

from conftest import (
    PORT_B,
    REGISTRY_APP_ID,
    REGISTRY_KEY,
    REGISTRY_SECRET,
    SECRET,
    make_sdk,
    needs_registry,
    uniq,
)

pytestmark = needs_registry


def registry_sdk(secret=None):
    return make_sdk(app_id=REGISTRY_APP_ID, key=REGISTRY_KEY, secret=secret or REGISTRY_SECRET)


def registry_client(clients):
    return clients(key=REGISTRY_KEY, secret=REGISTRY_SECRET, port=PORT_B)


def test_registry_trigger_reaches_pysher_on_public_channel(clients):
    sdk = registry_sdk()
    c = registry_client(clients)
    ch = uniq("py-registry")
    c.subscribe(ch)
    assert sdk.trigger(ch, "registry-event", {"from": "registry"}) == {}
    _, _, data = c.wait_event("registry-event", ch)
    assert json.loads(data) == {"from": "registry"}


def test_registry_private_channel_signed_with_its_secret(clients):
    sdk = registry_sdk()
    c = registry_client(clients)
    ch = uniq("private-py-registry")
    auth = sdk.authenticate(channel=ch, socket_id=c.socket_id)["auth"]
    _, data = c.subscribe(ch, auth=auth)
    assert data == "{}"
    assert sdk.trigger(ch, "secret-event", "hello") == {}
    assert c.wait_event("secret-event", ch)[2] == "hello"


def test_registry_channels_info_and_channel_info(clients):
    sdk = registry_sdk()
    prefix = uniq("py-registry-list")
    registry_client(clients).subscribe(prefix + "-a")
    assert sdk.channels_info(prefix_filter=prefix) == {"channels": {prefix + "-a": {}}}
    assert sdk.channel_info(prefix + "-a") == {"occupied": True}
    assert sdk.channel_info(prefix + "-nobody") == {"occupied": False}
    # The fixture's main app shares nothing with it.
    assert make_sdk().channels_info(prefix_filter=prefix) == {"channels": {}}


def test_registry_wrong_secret_is_bad_auth():
    for secret in ("not-the-secret", SECRET):
        bad = registry_sdk(secret=secret)
        with pytest.raises(pusher.errors.PusherBadAuth):
            bad.trigger(uniq("py-registry"), "ev", "x")
        with pytest.raises(pusher.errors.PusherBadAuth):
            bad.channels_info()
