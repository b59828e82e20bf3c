"""User sign-in with the Python server SDK: authenticate_user signs a pusher:signin that the
server accepts, send_to_user reaches the signed-in socket, and terminate_user_connections
(which the SDK posts to /users/{id}/terminate_connections, without /apps/{id}) closes it.
The SDK talks to node A; the sockets it reaches are on node B (node A outside cluster
mode)."""
import json

import websocket

from conftest import HOST, KEY, PORT, PORT_B, WAIT, uniq


def open_socket(port=PORT):
    ws = websocket.create_connection(
        "ws://%s:%d/app/%s?protocol=7&client=py-raw&version=1" % (HOST, port, KEY), timeout=WAIT
    )
    hello = json.loads(ws.recv())
    assert hello["event"] == "pusher:connection_established"
    return ws, json.loads(hello["data"])["socket_id"]


def next_frame(ws, skip=("pusher_internal:subscription_count",)):
    while True:
        frame = ws.recv()
        if not frame:
            return None
        msg = json.loads(frame)
        if msg.get("event") not in skip:
            return msg


def sign_in(sdk, user_id, port=PORT):
    ws, socket_id = open_socket(port)
    auth = sdk.authenticate_user(socket_id, {"id": user_id, "user_info": {"name": "py"}})
    ws.send(json.dumps({"event": "pusher:signin", "data": auth}))
    ok = next_frame(ws)
    assert ok["event"] == "pusher:signin_success", ok
    assert json.loads(ok["data"])["user_data"] == auth["user_data"]
    return ws


def test_authenticate_user_signs_a_signin_the_server_accepts(sdk):
    ws = sign_in(sdk, uniq("u"))
    ws.close()


def test_send_to_user_reaches_the_signed_in_socket(sdk):
    user = uniq("u")
    ws = sign_in(sdk, user, PORT_B)
    channel = "#server-to-user-%s" % user
    ws.send(json.dumps({"event": "pusher:subscribe", "data": {"auth": "", "channel": channel}}))
    assert next_frame(ws)["event"] == "pusher_internal:subscription_succeeded"
    sdk.send_to_user(user, "hello", {"n": 1})
    msg = next_frame(ws)
    assert (msg["event"], msg["channel"], json.loads(msg["data"])) == ("hello", channel, {"n": 1}), msg
    ws.close()


def test_terminate_user_connections_closes_only_that_user(sdk):
    user, other = uniq("u"), uniq("u")
    ws = sign_in(sdk, user, PORT_B)
    bystander = sign_in(sdk, other)
    assert sdk.terminate_user_connections(user) == {}
    err = next_frame(ws)
    assert err["event"] == "pusher:error" and err["data"]["code"] == 4200, err
    opcode, payload = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(payload[:2], "big") == 4200
    # The other user's socket still answers.
    bystander.send(json.dumps({"event": "pusher:ping", "data": {}}))
    assert next_frame(bystander)["event"] == "pusher:pong"
    bystander.close()
