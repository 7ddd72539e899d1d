"""TLS listeners: paho-mqtt and mosquitto_pub/sub against the real broker.

One broker serves four TLS listeners built from certificates generated here:

* ``open``: server certificate only; client certificates optional (verified if sent);
* ``mutual``: ``require_client_cert`` (mutual TLS);
* ``identity``: mutual TLS + ``use_identity_as_username`` and an ACL keyed on the
  certificate's CN;
* ``tls13``: ``min_version: TLSv1.3``.
"""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.helpers.broker_process import BrokerProcess
from tests.helpers.rawclient import Closed
from tests.server.clients import (
    Paho,
    TlsRawClient,
    client_context,
    config,
    listener,
    paho_factory,
    run_tool,
    tls_block,
    tls_refused,
)
from tests.server.pki import Pki, make_pki

for _tool in ("mosquitto_pub", "mosquitto_sub"):
    assert shutil.which(_tool), f"{_tool} is not installed (apt-get install mosquitto-clients)"

ACL = """\
# anonymous clients
topic readwrite open/#

user device-42
topic readwrite devices/device-42/#
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    workdir = tmp_path_factory.mktemp("tls-broker")
    (workdir / "acl").write_text(ACL)
    listeners = (
        listener("open", "tls", tls_block(pki, cafile=pki.ca))
        + listener("mutual", "tls", tls_block(pki, cafile=pki.ca, require_client_cert=True))
        + listener("identity", "tls", tls_block(pki, cafile=pki.ca, require_client_cert=True,
                                                use_identity_as_username=True))
        + listener("tls13", "tls", tls_block(pki, min_version="TLSv1.3"))
    )
    proc = BrokerProcess(workdir, config(listeners, "auth:\n  acl_file: acl\n")).start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log_text()


@pytest.fixture
def paho(tls_broker: BrokerProcess) -> Iterator[Callable[..., Paho]]:
    clients: list[Paho] = []
    yield paho_factory(clients)
    for client in clients:
        client.stop()


def _port(proc: BrokerProcess, name: str) -> int:
    return proc.ports[name]


def _mosq_tls(pki: Pki, cert: bool = True) -> list[str]:
    args = ["--cafile", str(pki.ca)]
    if cert:
        args += ["--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    return args


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_paho_over_tls(tls_broker: BrokerProcess, pki: Pki, paho: Callable[..., Paho],
                       protocol: int) -> None:
    port = _port(tls_broker, "open")
    tls = {"ca_certs": str(pki.ca)}
    sub = paho("127.0.0.1", port, f"tls-sub-{protocol}", protocol=protocol, tls=tls).connect()
    sub.subscribe(f"open/paho/{protocol}", 1)
    pub = paho("127.0.0.1", port, f"tls-pub-{protocol}", protocol=protocol,
               tls={**tls, "certfile": str(pki.client_cert), "keyfile": str(pki.client_key)})
    pub.connect()
    pub.publish(f"open/paho/{protocol}", b"over tls", qos=1)
    msg = sub.receive()
    assert (msg.topic, msg.payload, msg.qos) == (f"open/paho/{protocol}", b"over tls", 1)


def test_mosquitto_clients_over_mutual_tls(tls_broker: BrokerProcess, pki: Pki,
                                           paho: Callable[..., Paho]) -> None:
    port = str(_port(tls_broker, "mutual"))
    common = ["-h", "127.0.0.1", "-p", port, *_mosq_tls(pki)]
    # A retained message first, so mosquitto_sub -C 1 needs no timing.
    pub = run_tool(["mosquitto_pub", *common, "-t", "open/mosq", "-m", "hello", "-r",
                    "-q", "1"])
    assert pub.returncode == 0, pub.stderr
    sub = run_tool(["mosquitto_sub", *common, "-t", "open/mosq", "-C", "1", "-W", "5",
                    "-F", "%t|%p|%r"])
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout.strip() == "open/mosq|hello|1"
    # And paho with a client certificate on the same listener sees it too.
    client = paho("127.0.0.1", int(port), "mutual-paho",
                  tls={"ca_certs": str(pki.ca), "certfile": str(pki.client_cert),
                       "keyfile": str(pki.client_key)}).connect()
    client.subscribe("open/mosq")
    msg = client.receive()
    assert (msg.payload, msg.retain) == (b"hello", True)
    client.publish("open/mosq", b"", qos=1, retain=True)  # clear it


def test_require_client_cert_refuses_clients_without_one(tls_broker: BrokerProcess,
                                                         pki: Pki) -> None:
    port = _port(tls_broker, "mutual")
    # No certificate at all.
    how = tls_refused("127.0.0.1", port, client_context(pki))
    assert how
    # A certificate from a CA the listener does not trust.
    assert tls_refused("127.0.0.1", port,
                       client_context(pki, pki.rogue_cert, pki.rogue_key))
    result = run_tool(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port),
                       *_mosq_tls(pki, cert=False), "-t", "open/x", "-m", "x", "-q", "1"])
    assert result.returncode != 0
    # With the right certificate it works.
    client = TlsRawClient("127.0.0.1", port, client_context(pki, pki.client_cert, pki.client_key))
    try:
        assert client.connect("mutual-ok").reason_code == 0
    finally:
        client.close()
    assert tls_broker.alive


def test_identity_as_username_with_acl(tls_broker: BrokerProcess, pki: Pki,
                                       paho: Callable[..., Paho]) -> None:
    port = _port(tls_broker, "identity")
    tls = {"ca_certs": str(pki.ca), "certfile": str(pki.client_cert),
           "keyfile": str(pki.client_key)}
    # The CONNECT username and password are ignored: the certificate's CN is the user.
    dev = paho("127.0.0.1", port, "dev42", protocol=mqtt.MQTTv5, tls=tls)
    dev.connect(username="mallory", password="wrong")
    granted = dev.subscribe("devices/device-42/#", 1)
    assert [rc.value for rc in granted] == [1]
    denied = dev.subscribe("open/#", 1)
    assert [rc.value for rc in denied] == [0x87]
    assert dev.publish("devices/device-42/temp", b"21.5", qos=1).value == 0
    msg = dev.receive()
    assert (msg.topic, msg.payload) == ("devices/device-42/temp", b"21.5")
    rc = dev.publish("devices/device-7/temp", b"not mine", qos=1)
    assert rc.value == 0x87  # not authorised
    # mosquitto_pub with the same certificate may publish to its own tree only.
    ok = run_tool(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), *_mosq_tls(pki),
                   "-t", "devices/device-42/humidity", "-m", "40", "-q", "1", "-V", "mqttv5"])
    assert ok.returncode == 0, ok.stderr
    msg = dev.receive()
    assert (msg.topic, msg.payload) == ("devices/device-42/humidity", b"40")


def test_identity_as_username_needs_a_common_name(tls_broker: BrokerProcess, pki: Pki) -> None:
    port = _port(tls_broker, "identity")
    client = TlsRawClient("127.0.0.1", port, client_context(pki, pki.nocn_cert, pki.nocn_key))
    try:
        with pytest.raises((Closed, ssl.SSLError, ConnectionError)):
            client.connect("no-cn")
    finally:
        client.close()
    assert "has no subject CN" in tls_broker.log_text()


def test_min_version_tls13(tls_broker: BrokerProcess, pki: Pki) -> None:
    port = _port(tls_broker, "tls13")
    assert tls_refused("127.0.0.1", port,
                       client_context(pki, max_version=ssl.TLSVersion.TLSv1_2))
    client = TlsRawClient("127.0.0.1", port, client_context(pki))
    try:
        assert client.connect("tls13-ok").reason_code == 0
        assert client.sock.version() == "TLSv1.3"  # type: ignore[attr-defined]
    finally:
        client.close()


def test_open_listener_rejects_untrusted_client_certificate(tls_broker: BrokerProcess,
                                                            pki: Pki) -> None:
    """cafile without require_client_cert: no certificate is fine, a bad one is not."""
    port = _port(tls_broker, "open")
    assert tls_refused("127.0.0.1", port, client_context(pki, pki.rogue_cert, pki.rogue_key))
    client = TlsRawClient("127.0.0.1", port, client_context(pki))
    try:
        assert client.connect("open-anon").reason_code == 0
    finally:
        client.close()


def test_bad_certificate_file_fails_start(tmp_path: Path, pki: Pki) -> None:
    text = config(listener("bad", "tls", f"certfile: {pki.ca}\nkeyfile: {pki.client_key}"))
    with pytest.raises(RuntimeError, match="cannot set up TLS"):
        BrokerProcess(tmp_path, text).start(timeout=10)
