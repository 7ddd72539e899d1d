"""What the admin API and dashboard cost the broker (issue 17: < 5 % of its CPU while a
dashboard is open during a load run; nothing on the message path when unused).

Three runs of the same fixed-rate load (``loadgen.py``'s ``latency`` scenario: one
publisher at ``--rate`` msg/s QoS 1 to one subscriber, plus ``--idle`` idle clients so
the clients table has something to list), each against a fresh broker; the broker's
CPU over the measurement window is read from /proc by loadgen:

* ``off``        admin.enabled false (the default);
* ``on``         admin enabled, nobody looking;
* ``dashboard``  admin enabled, a headless Chromium (Debian's) logged in on the
                 overview (live charts over SSE, one sample a second), switching to
                 the clients table and back every 2 s.

Usage::

    .venv/bin/python benchmarks/admin_overhead.py [--rate 2000] [--duration 10]

Prints one JSON line per run and a summary line. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_broker(workdir: Path, admin: bool) -> tuple[subprocess.Popen[bytes], int, str]:
    subprocess.run([sys.executable, "-m", "iotbroker", "passwd", str(workdir / "pw"), "alice",
                    "-b", "alice-secret", "--iterations", "1000"], check=True,
                   capture_output=True)
    config = (
        "listeners:\n  - {name: default, type: tcp, host: 127.0.0.1, port: 0}\n"
        "storage: {backend: memory}\nsys_topics: {enabled: false}\n"
        f"auth: {{password_file: {workdir / 'pw'}}}\n"
        "logging: {level: WARNING, levels: {iotbroker.listeners: INFO, iotbroker.admin: INFO}}\n"
        f"admin: {{enabled: {'true' if admin else 'false'}, port: 0, users: [alice]}}\n"
    )
    (workdir / "broker.yaml").write_text(config)
    log = open(workdir / "broker.log", "wb")  # noqa: SIM115 (kept by the child)
    proc = subprocess.Popen([sys.executable, "-m", "iotbroker", "run", "--config",
                             str(workdir / "broker.yaml")], stdout=log, stderr=subprocess.STDOUT,
                            cwd=workdir)
    deadline = time.monotonic() + 15
    port, url = 0, ""
    while time.monotonic() < deadline:
        text = (workdir / "broker.log").read_text()
        found = re.search(r"listening on 127.0.0.1:(\d+)", text)
        admin_found = re.search(r"admin listening on (http://\S+)", text)
        if found and (admin_found or not admin):
            port, url = int(found.group(1)), admin_found.group(1) if admin_found else ""
            break
        time.sleep(0.05)
    if not port:
        proc.kill()
        raise SystemExit(f"broker did not start:\n{(workdir / 'broker.log').read_text()}")
    return proc, port, url


def idle_clients(port: int, count: int) -> list[socket.socket]:
    """``count`` MQTT 3.1.1 clients that connect and stay idle (bounded)."""
    socks = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        cid = f"idle-{i}".encode()
        body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
        sock.sendall(bytes([0x10, len(body)]) + body)
        sock.recv(4)
        socks.append(sock)
    return socks


def dashboard(url: str, stop: threading.Event) -> None:
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(url + "/")
        deadline = time.monotonic() + 10
        while not driver.find_element(By.ID, "username").is_displayed():
            if time.monotonic() > deadline:
                raise SystemExit("no login form")
            time.sleep(0.05)
        driver.find_element(By.ID, "username").send_keys("alice")
        driver.find_element(By.ID, "password").send_keys("alice-secret\n")
        time.sleep(1)
        pages = ("#/overview", "#/clients")
        i = 0
        while not stop.wait(2.0):
            i += 1
            driver.execute_script("location.hash = arguments[0]", pages[i % 2])
    finally:
        driver.quit()


def run(mode: str, args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        proc, port, url = start_broker(workdir, admin=mode != "off")
        stop = threading.Event()
        viewer = None
        try:
            socks = idle_clients(port, args.idle)
            if mode == "dashboard":
                viewer = threading.Thread(target=dashboard, args=(url, stop))
                viewer.start()
                time.sleep(4)  # logged in, charts streaming
            out = subprocess.run(
                [sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), "run", "--port",
                 str(port), "--scenario", "latency", "--rate", str(args.rate), "--warmup", "1",
                 "--duration", str(args.duration), "--broker-pid", str(proc.pid)],
                check=True, capture_output=True, text=True, timeout=args.duration + 60)
            result = json.loads(out.stdout[out.stdout.index("{"):])
            for sock in socks:
                sock.close()
        finally:
            stop.set()
            if viewer is not None:
                viewer.join(timeout=20)
            proc.terminate()
            proc.wait(timeout=20)
    return {"mode": mode, "broker_cpu_pct": round(result["broker_cpu_pct"], 2),
            "sent_per_s": round(result["sent_rate"]), "loss": result["loss"],
            "latency_ms": result["latency_ms"]}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, clock ticks


def quiet(mode: str, args: argparse.Namespace) -> dict[str, object]:
    """No load: the broker's own CPU over ``--duration`` s, with ``--idle`` idle clients,
    with or without a dashboard open (what the dashboard itself costs, without the
    noise of a load run on a shared machine)."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, port, url = start_broker(Path(tmp), admin=mode != "off")
        stop = threading.Event()
        viewer = None
        try:
            socks = idle_clients(port, args.idle)
            if mode == "dashboard":
                viewer = threading.Thread(target=dashboard, args=(url, stop))
                viewer.start()
                time.sleep(4)
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.duration)
            c1, t1 = cpu_seconds(proc.pid), time.monotonic()
            for sock in socks:
                sock.close()
        finally:
            stop.set()
            if viewer is not None:
                viewer.join(timeout=20)
            proc.terminate()
            proc.wait(timeout=20)
    return {"mode": f"quiet-{mode}", "broker_cpu_pct": round((c1 - c0) / (t1 - t0) * 100, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--idle", type=int, default=200)
    ap.add_argument("--quiet", action="store_true",
                    help="no load: the dashboard's own cost on an idle broker")
    args = ap.parse_args()
    if args.quiet:
        for mode in ("off", "on", "dashboard"):
            print(json.dumps(quiet(mode, args)), flush=True)
        return
    results = {}
    for mode in ("off", "on", "dashboard"):
        results[mode] = run(mode, args)
        print(json.dumps(results[mode]), flush=True)
    base = float(results["off"]["broker_cpu_pct"])  # type: ignore[arg-type]
    dash = float(results["dashboard"]["broker_cpu_pct"])  # type: ignore[arg-type]
    on = float(results["on"]["broker_cpu_pct"])  # type: ignore[arg-type]
    print(json.dumps({"summary": {
        "off_cpu_pct": base, "on_cpu_pct": on, "dashboard_cpu_pct": dash,
        "dashboard_share_of_broker_cpu_pct": round((dash - base) / dash * 100, 2) if dash else None,
    }}))


if __name__ == "__main__":
    main()
