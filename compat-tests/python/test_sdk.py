"""The Python server SDK (pusher on PyPI) against the HTTP API.

The SDK talks to node A; a pysher client that receives what it publishes is on node B
(clients(port=PORT_B); node A outside cluster mode), and where several clients make up a
count or a list, some are on each node."""
import hashlib
import hmac
import json

import pusher
import pytest

from conftest import FULL, KEY, PORT_B, SECRET, make_sdk, needs_subscription_count, uniq


def test_trigger_returns_empty_object(sdk):
    assert sdk.trigger(uniq("py-sdk"), "ev", {"a": 1}) == {}


def test_trigger_to_many_channels(sdk, clients):
    chans = [uniq("py-multi") for _ in range(3)]
    c = clients(port=PORT_B)
    for ch in chans:
        c.subscribe(ch)
    assert sdk.trigger(chans, "fan", "out") == {}
    got = sorted(c.wait(lambda ch, e, d: e == "fan")[0] for _ in chans)
    assert got == sorted(chans)


def test_trigger_oversize_data_is_413(sdk):
    with pytest.raises(pusher.errors.PusherBadStatus) as exc:
        sdk.trigger(uniq("py-big"), "big", "x" * (11 * 1024))
    assert str(exc.value).startswith("413")


def test_trigger_batch_with_ten_items(sdk):
    ch = uniq("py-batch")
    batch = [{"channel": ch, "name": "e%d" % i, "data": str(i)} for i in range(10)]
    assert sdk.trigger_batch(batch) == {}


def test_trigger_batch_with_eleven_items_is_400(sdk):
    ch = uniq("py-batch")
    batch = [{"channel": ch, "name": "e%d" % i, "data": str(i)} for i in range(11)]
    with pytest.raises(pusher.errors.PusherBadRequest):
        sdk.trigger_batch(batch)


def test_channels_info_lists_occupied_channels(sdk, clients):
    prefix = uniq("py-list")
    c = clients()
    c.subscribe(prefix + "-a")
    c.subscribe(prefix + "-b")
    assert sdk.channels_info(prefix_filter=prefix) == {"channels": {prefix + "-a": {}, prefix + "-b": {}}}


def test_channels_info_with_user_count(sdk, clients):
    prefix = uniq("presence-py-list")
    a = clients(user_data={"user_id": "u1"})
    b = clients(user_data={"user_id": "u2"}, port=PORT_B)
    a.subscribe(prefix + "-room")
    b.subscribe(prefix + "-room")
    info = sdk.channels_info(prefix_filter=prefix, attributes=["user_count"])
    assert info == {"channels": {prefix + "-room": {"user_count": 2}}}


def test_channels_info_user_count_without_presence_prefix_is_400(sdk):
    with pytest.raises(pusher.errors.PusherBadRequest):
        sdk.channels_info(prefix_filter=uniq("py-pub"), attributes=["user_count"])


def test_channel_info_unoccupied(sdk):
    assert sdk.channel_info(uniq("py-empty")) == {"occupied": False}


@needs_subscription_count
def test_channel_info_subscription_count(sdk, clients):
    ch = uniq("py-count")
    clients().subscribe(ch)
    clients(port=PORT_B).subscribe(ch)
    assert sdk.channel_info(ch, ["subscription_count"]) == {"occupied": True, "subscription_count": 2}


def test_channel_info_user_count_on_public_is_400(sdk, clients):
    ch = uniq("py-pub")
    clients().subscribe(ch)
    with pytest.raises(pusher.errors.PusherBadRequest):
        sdk.channel_info(ch, ["user_count"])


def test_users_info(sdk, clients):
    ch = uniq("presence-py-users")
    clients(user_data={"user_id": 1, "user_info": {"a": 1}}).subscribe(ch)
    clients(user_data={"user_id": 2}, port=PORT_B).subscribe(ch)
    users = sdk.users_info(ch)
    assert list(users) == ["users"]
    assert sorted(users["users"], key=lambda u: u["id"]) == [{"id": "1"}, {"id": "2"}]


def test_users_info_on_non_presence_is_400(sdk):
    with pytest.raises(pusher.errors.PusherBadRequest):
        sdk.users_info(uniq("private-py"))


def test_wrong_secret_is_bad_auth():
    bad = make_sdk(secret="not-the-secret")
    with pytest.raises(pusher.errors.PusherBadAuth):
        bad.trigger(uniq("py"), "ev", "x")
    with pytest.raises(pusher.errors.PusherBadAuth):
        bad.channels_info()


def test_unknown_app_is_404():
    stranger = make_sdk(app_id="987654")
    with pytest.raises(pusher.errors.PusherBadStatus) as exc:
        stranger.channels_info()
    assert str(exc.value).startswith("404")


@pytest.mark.skipif(not FULL, reason="needs the disabled fixture app 3 (not available in --target mode)")
def test_disabled_app_is_forbidden():
    disabled = make_sdk(app_id="3", key="disabled-key", secret="disabled-secret")
    with pytest.raises(pusher.errors.PusherForbidden):
        disabled.trigger(uniq("py"), "ev", "x")


def test_authenticate_private_signature_format(sdk):
    auth = sdk.authenticate(channel="private-foobar", socket_id="1234.1234")
    expected = hmac.new(SECRET.encode(), b"1234.1234:private-foobar", hashlib.sha256).hexdigest()
    assert auth == {"auth": "%s:%s" % (KEY, expected)}


def test_authenticate_encrypted_channel_returns_shared_secret(sdk, clients):
    c = clients(port=PORT_B)
    name = uniq("private-encrypted-py")
    auth = sdk.authenticate(channel=name, socket_id=c.socket_id)
    assert set(auth) == {"auth", "shared_secret"}
    # The server only ever sees the auth token; the shared secret stays client-side.
    _, data = c.subscribe(name, auth=auth["auth"])
    assert data == "{}"
    sdk.trigger(name, "enc", {"hidden": True})
    _, _, payload = c.wait_event("enc", name)
    envelope = json.loads(payload)
    assert sorted(envelope) == ["ciphertext", "nonce"]
    assert "hidden" not in payload
