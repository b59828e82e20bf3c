"""Native TLS ([server.tls]) with the Python SDKs: the pusher server SDK with ssl=True over
https:// and a pysher client over wss://, both trusting the suite's own CA through their
options, and a certificate renewed mid-run (new files, then SIGHUP) under a live pysher
connection."""
import hashlib
import os
import signal
import socket
import ssl
import subprocess
import time

import pusher
import pytest
from pusher.requests import RequestsBackend

from conftest import APP_ID, KEY, SECRET, MASTER_KEY_B64, WAIT, uniq

TLS_PORT = int(os.environ["PUSHI_TLS_PORT"]) if os.environ.get("PUSHI_TLS_PORT") else None
TLS_PID = int(os.environ["PUSHI_TLS_PID"]) if os.environ.get("PUSHI_TLS_PID") else None
TLS_DIR = os.environ.get("PUSHI_TLS_DIR")
TLS_CA = os.environ.get("PUSHI_TLS_CA")
MAKE_CERT = os.environ.get("PUSHI_TLS_MAKE_CERT")

pytestmark = pytest.mark.skipif(
    not (TLS_PORT and TLS_PID and TLS_DIR and TLS_CA and MAKE_CERT),
    reason="needs the TLS instance (PUSHI_TLS_*, started by compat-tests/run; not available in --target mode)",
)


class SuiteCaBackend(RequestsBackend):
    """The SDK's requests backend, verifying against the suite's CA (with ssl=True the SDK
    otherwise pins its own bundled CA list)."""

    def __init__(self, client, **options):
        super().__init__(client, **options)
        self.options["verify"] = TLS_CA


def tls_sdk():
    return pusher.Pusher(
        app_id=APP_ID,
        key=KEY,
        secret=SECRET,
        ssl=True,
        host="localhost",
        port=TLS_PORT,
        timeout=5,
        backend=SuiteCaBackend,
        encryption_master_key_base64=MASTER_KEY_B64,
    )


def served_fingerprint():
    """SHA-256 of the certificate a new connection is served, verified against the CA."""
    ctx = ssl.create_default_context(cafile=TLS_CA)
    with socket.create_connection(("127.0.0.1", TLS_PORT), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def test_sdk_over_https_reaches_pysher_over_wss(clients):
    client = clients(port=TLS_PORT, ca=TLS_CA)
    channel = uniq("tls")
    client.subscribe(channel)
    sdk = tls_sdk()
    sdk.trigger(channel, "greet", {"over": "tls"})
    _, _, data = client.wait_event("greet", channel)
    assert '"over": "tls"' in data or '"over":"tls"' in data
    info = sdk.channel_info(channel, ["subscription_count"])
    assert info["occupied"] is True


def test_an_untrusted_certificate_is_refused():
    # The SDK's own CA list does not have the suite's CA: verification must fail.
    sdk = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, ssl=True, host="localhost", port=TLS_PORT, timeout=5)
    with pytest.raises(Exception) as err:
        sdk.trigger(uniq("tls-untrusted"), "e", {})
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value) or "SSLError" in repr(err.value)


def test_renewed_certificate_keeps_the_live_connection(clients):
    before = served_fingerprint()
    client = clients(port=TLS_PORT, ca=TLS_CA)
    socket_id = client.socket_id
    channel = uniq("tls-renew")
    client.subscribe(channel)

    issued = subprocess.run([MAKE_CERT, TLS_DIR], check=True, capture_output=True, text=True).stdout.strip()
    os.kill(TLS_PID, signal.SIGHUP)
    after = before
    deadline = time.time() + 10
    while after == before and time.time() < deadline:
        time.sleep(0.1)
        after = served_fingerprint()
    assert after != before, "new connections get the renewed certificate"
    assert after == issued.replace(":", "").lower()

    # A new client handshakes with the new certificate; the kept one still receives.
    fresh = clients(port=TLS_PORT, ca=TLS_CA)
    fresh.subscribe(channel)
    tls_sdk().trigger(channel, "after-renewal", {"ok": 1})
    client.wait_event("after-renewal", channel)
    fresh.wait_event("after-renewal", channel)
    assert client.socket_id == socket_id
    assert client.pusher.connection.state == "connected"
