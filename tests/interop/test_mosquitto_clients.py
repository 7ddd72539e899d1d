"""Interop: Eclipse Mosquitto's command line clients (Debian ``mosquitto-clients``).

``mosquitto_sub`` runs with ``-d`` so its debug lines tell us when the SUBACK came
back (``Subscribed (mid: N): codes``); received messages are printed with ``-F`` in a
``MSG|topic|qos|retain|payload`` line. Its stdout is line-buffered with ``stdbuf`` and
read by a thread; every wait is bounded, and ``-W`` makes each client exit on its own.

[MQTT-7.0.0-2]: the stock clients, with no option or extension of ours, interoperate
with the broker for everything below (each QoS, retained, wildcards, wills, sessions).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

WAIT = 5.0
FORMAT = "MSG|%t|%q|%r|%p"

VERSIONS = ["mqttv311", "mqttv5"]

for _tool in ("mosquitto_pub", "mosquitto_sub", "stdbuf"):
    assert shutil.which(_tool), f"{_tool} is not installed (apt-get install mosquitto-clients)"


class MosqSub:
    """A ``mosquitto_sub`` process whose output lines are read into a queue."""

    def __init__(self, host: str, port: int, *args: str, fmt: str = FORMAT) -> None:
        cmd = ["stdbuf", "-oL", "mosquitto_sub", "-h", host, "-p", str(port), "-d", "-F", fmt]
        self.proc = subprocess.Popen(
            [*cmd, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout: float = WAIT) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"mosquitto_sub printed nothing new in {timeout}s; output so far:\n"
                + "\n".join(self.seen)
            ) from None
        if line is None:
            self.lines.put(None)
            raise AssertionError(
                f"mosquitto_sub exited ({self.proc.wait()}); output:\n" + "\n".join(self.seen)
            )
        self.seen.append(line)
        return line

    def subscribed(self) -> list[int]:
        """Wait for the SUBACK; its return/reason codes."""
        while True:
            line = self.next_line()
            if line.startswith("Subscribed (mid:"):
                return [int(c) for c in line.split(":", 2)[2].split(",")]

    def messages(self, n: int, prefix: str = "MSG|") -> list[tuple[str, ...]]:
        got: list[tuple[str, ...]] = []
        while len(got) < n:
            line = self.next_line()
            if line.startswith(prefix):
                got.append(tuple(line[len(prefix):].split("|")))
        return got

    def wait(self, timeout: float = WAIT + 2) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("mosquitto_sub did not exit") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def mosq(broker) -> Iterator[Any]:
    """``mosq.sub(*args)`` starts mosquitto_sub, ``mosq.pub(*args)`` runs mosquitto_pub."""
    started: list[MosqSub] = []

    class Mosq:
        host, port = broker.host, broker.port

        @staticmethod
        def sub(*args: str, fmt: str = FORMAT) -> MosqSub:
            s = MosqSub(broker.host, broker.port, *args, fmt=fmt)
            started.append(s)
            return s

        @staticmethod
        def pub(*args: str) -> None:
            result = subprocess.run(
                ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), *args],
                capture_output=True,
                check=False,
                timeout=WAIT,
                stdin=subprocess.DEVNULL,
            )
            assert result.returncode == 0, (
                f"mosquitto_pub {args} exited {result.returncode}: {result.stderr!r}"
            )

    yield Mosq
    for s in started:
        s.stop()


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("sub_v", VERSIONS)
@pytest.mark.parametrize("pub_v", VERSIONS)
def test_publish_subscribe_each_qos(mosq, uniq: str, pub_v: str, sub_v: str, qos: int) -> None:
    """Every QoS, and across protocol versions (a 3.1.1 publisher to a 5.0 subscriber...)."""
    sub = mosq.sub("-V", sub_v, "-i", f"{uniq}-sub", "-q", "2", "-t", f"{uniq}/t",
                   "-C", "1", "-W", "5")
    assert sub.subscribed() == [2]
    mosq.pub("-V", pub_v, "-i", f"{uniq}-pub", "-q", str(qos), "-t", f"{uniq}/t",
             "-m", "hello world")
    assert sub.messages(1) == [(f"{uniq}/t", str(qos), "0", "hello world")]
    assert sub.wait() == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_qos_downgraded_to_subscription(mosq, uniq: str, version: str) -> None:
    sub = mosq.sub("-V", version, "-q", "1", "-t", f"{uniq}/t", "-C", "1", "-W", "5")
    assert sub.subscribed() == [1]
    mosq.pub("-V", version, "-q", "2", "-t", f"{uniq}/t", "-m", "x")
    assert sub.messages(1) == [(f"{uniq}/t", "1", "0", "x")]


@pytest.mark.parametrize("version", VERSIONS)
def test_many_lines_in_order(mosq, uniq: str, version: str) -> None:
    """``mosquitto_pub -l`` sends each stdin line as a message, here at QoS 1."""
    n = 100
    sub = mosq.sub("-V", version, "-q", "1", "-t", f"{uniq}/t", "-C", str(n), "-W", "8")
    sub.subscribed()
    result = subprocess.run(
        ["mosquitto_pub", "-h", mosq.host, "-p", str(mosq.port), "-V", version, "-q", "1",
         "-t", f"{uniq}/t", "-l"],
        input="".join(f"line {i}\n" for i in range(n)).encode(),
        capture_output=True,
        check=False,
        timeout=WAIT,
    )
    assert result.returncode == 0, result.stderr
    assert [m[3] for m in sub.messages(n)] == [f"line {i}" for i in range(n)]
    assert sub.wait() == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_set_received_cleared(mosq, uniq: str, version: str) -> None:
    topic, marker = f"{uniq}/r", f"{uniq}/marker"
    mosq.pub("-V", version, "-q", "1", "-r", "-t", topic, "-m", "kept")

    late = mosq.sub("-V", version, "-q", "1", "-t", topic, "-C", "1", "-W", "5")
    assert late.messages(1) == [(topic, "1", "1", "kept")]
    assert late.wait() == 0

    mosq.pub("-V", version, "-q", "1", "-r", "-t", topic, "-n")  # null message clears it

    after = mosq.sub("-V", version, "-q", "1", "-t", topic, "-t", marker, "-C", "1", "-W", "5")
    assert after.subscribed() == [1, 1]
    mosq.pub("-V", version, "-q", "1", "-t", marker, "-m", "m")
    assert after.messages(1) == [(marker, "1", "0", "m")]  # nothing retained came first
    assert after.wait() == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_only_through_wildcard(mosq, uniq: str, version: str) -> None:
    for t in ("a", "b/c"):
        mosq.pub("-V", version, "-q", "1", "-r", "-t", f"{uniq}/{t}", "-m", t)
    sub = mosq.sub("-V", version, "-q", "1", "-t", f"{uniq}/#", "--retained-only", "-W", "5")
    got = sorted(sub.messages(2))
    assert got == [(f"{uniq}/a", "1", "1", "a"), (f"{uniq}/b/c", "1", "1", "b/c")]
    # --retained-only exits at the first message without the retain flag
    mosq.pub("-V", version, "-q", "1", "-t", f"{uniq}/live", "-m", "live")
    assert sub.wait() == 0
    for t in ("a", "b/c"):
        mosq.pub("-V", version, "-q", "1", "-r", "-t", f"{uniq}/{t}", "-n")


@pytest.mark.parametrize("version", VERSIONS)
def test_wildcards(mosq, uniq: str, version: str) -> None:
    end = f"{uniq}/end"
    sub = mosq.sub("-V", version, "-q", "1", "-t", f"{uniq}/+/temp", "-t", f"{uniq}/log/#",
                   "-t", end, "-W", "5")
    assert sub.subscribed() == [1, 1, 1]
    for t in ("a/temp", "a/hum", "a/b/temp", "log", "log/x/y", "logs/x", "b/temp", "end"):
        mosq.pub("-V", version, "-q", "1", "-t", f"{uniq}/{t}", "-m", t)
    got: list[str] = []
    while True:
        topic = sub.messages(1)[0][0]
        if topic == end:
            break
        got.append(topic)
    assert got == [f"{uniq}/a/temp", f"{uniq}/log", f"{uniq}/log/x/y", f"{uniq}/b/temp"]


@pytest.mark.parametrize("version", VERSIONS)
def test_will_on_sigkill(mosq, uniq: str, version: str) -> None:
    dying = mosq.sub("-V", version, "-i", f"{uniq}-dying", "-t", f"{uniq}/nothing",
                     "--will-topic", f"{uniq}/will", "--will-payload", "unexpectedly gone",
                     "--will-qos", "1")
    dying.subscribed()  # connected, and so the will is registered
    watcher = mosq.sub("-V", version, "-q", "1", "-t", f"{uniq}/will", "-C", "1", "-W", "5")
    watcher.subscribed()
    os.kill(dying.proc.pid, signal.SIGKILL)
    assert watcher.messages(1) == [(f"{uniq}/will", "1", "0", "unexpectedly gone")]
    assert watcher.wait() == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_will_on_sigkill(mosq, uniq: str, version: str) -> None:
    dying = mosq.sub("-V", version, "-i", f"{uniq}-dying", "-t", f"{uniq}/nothing",
                     "--will-topic", f"{uniq}/status", "--will-payload", "offline",
                     "--will-qos", "1", "--will-retain")
    dying.subscribed()
    os.kill(dying.proc.pid, signal.SIGKILL)
    dying.proc.wait()
    # a subscriber that comes afterwards gets the will as the retained status
    late = mosq.sub("-V", version, "-q", "1", "-t", f"{uniq}/status", "-C", "1", "-W", "5")
    assert late.messages(1) == [(f"{uniq}/status", "1", "1", "offline")]
    mosq.pub("-V", version, "-q", "1", "-r", "-t", f"{uniq}/status", "-n")


@pytest.mark.parametrize("version", VERSIONS)
def test_no_will_on_clean_exit(mosq, uniq: str, version: str) -> None:
    watcher = mosq.sub("-V", version, "-q", "1", "-t", f"{uniq}/will", "-t", f"{uniq}/end",
                       "-C", "1", "-W", "5")
    watcher.subscribed()
    # -E: subscribe, then DISCONNECT and exit normally
    leaving = mosq.sub("-V", version, "-t", f"{uniq}/nothing", "-E",
                       "--will-topic", f"{uniq}/will", "--will-payload", "gone")
    assert leaving.wait() == 0
    mosq.pub("-V", version, "-q", "1", "-t", f"{uniq}/end", "-m", "end")
    assert watcher.messages(1) == [(f"{uniq}/end", "1", "0", "end")]


def _session_args(version: str, cid: str) -> list[str]:
    args = ["-V", version, "-c", "-i", cid, "-q", "1"]
    if version == "mqttv5":
        args += ["-x", "300"]
    return args


@pytest.mark.parametrize("version", VERSIONS)
def test_persistent_session_across_reconnect(mosq, uniq: str, version: str) -> None:
    cid, topic = f"{uniq}-sub", f"{uniq}/q"
    first = mosq.sub(*_session_args(version, cid), "-t", topic, "-E")
    assert first.subscribed() == [1]
    assert first.wait() == 0  # subscribed, then disconnected

    for i in range(3):
        mosq.pub("-V", version, "-q", "1", "-t", topic, "-m", f"offline-{i}")

    # reconnect without subscribing again (the session's subscription delivers)
    back = mosq.sub(*_session_args(version, cid), "-t", f"{uniq}/other", "-C", "3", "-W", "5")
    assert back.messages(3) == [(topic, "1", "0", f"offline-{i}") for i in range(3)]
    assert back.wait() == 0


def test_v5_properties_forwarded(mosq, uniq: str) -> None:
    sub = mosq.sub("-V", "mqttv5", "-q", "1", "-t", f"{uniq}/t", "-C", "1", "-W", "5",
                   fmt="PROPS|%t|%C|%R|%D|%F|%P|%p")
    sub.subscribed()
    mosq.pub("-V", "mqttv5", "-q", "1", "-t", f"{uniq}/t", "-m", "body",
             "-D", "PUBLISH", "content-type", "text/plain",
             "-D", "PUBLISH", "response-topic", f"{uniq}/reply",
             "-D", "PUBLISH", "correlation-data", "corr-1",
             "-D", "PUBLISH", "payload-format-indicator", "1",
             "-D", "PUBLISH", "user-property", "k1", "v1",
             "-D", "PUBLISH", "user-property", "k1", "v2")
    (line,) = sub.messages(1, prefix="PROPS|")
    topic, ctype, resp, corr, pfi, user, payload = line
    assert (topic, ctype, resp, corr, pfi, payload) == (
        f"{uniq}/t", "text/plain", f"{uniq}/reply", "corr-1", "1", "body"
    )
    assert user.split() == ["k1:v1", "k1:v2"]
