"""The ``iotsim`` command.

::

    iotsim run SCENARIO.yaml --host H --port P [--duration 60s] [--workers N] [--report DIR]
    iotsim sensors --devices 5000 --rate 1/s --qos 1 --host H --port P --duration 30s \\
        [--mqtt 3.1.1|5] [--payload-size 64] [--connect-rate 1000/s] [--report DIR]
    iotsim check SCENARIO.yaml          # validate a scenario file and summarise it

Exit status: 0 when the accounting matches what QoS allows, 1 when it found violations
(or no device connected), 2 for a usage or scenario error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from rich.console import Console
from rich.markup import escape

from iotsim.runner import run
from iotsim.scenario import (
    Scenario,
    ScenarioError,
    TlsSpec,
    load_scenario,
    parse_duration,
    parse_rate,
    sensors_preset,
)


def _duration(text: str) -> float:
    try:
        return parse_duration(text, "--duration")
    except ScenarioError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _rate(text: str) -> float:
    try:
        return parse_rate(text, "--rate")
    except ScenarioError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    p.add_argument("--duration", type=_duration, help="run length, e.g. 30s, 2m")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--report", metavar="DIR", help="write report.json and report.html here")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--cafile", help="CA certificate that signs the broker's (implies --tls)")
    p.add_argument("--cert", help="client certificate, PEM (implies --tls; with --key)")
    p.add_argument("--key", help="client private key, PEM (with --cert)")
    p.add_argument("--tls-insecure", "--insecure", dest="insecure", action="store_true",
                   help="TLS without verifying the broker's certificate (implies --tls)")
    p.add_argument("--username", "-u", help="user name of every device and monitor")
    p.add_argument("--password", "-P", help="password (with --username)")
    p.add_argument("--source-addresses", type=int, metavar="N",
                   help="spread connections over 127.0.0.1..127.0.0.N")
    p.add_argument("--quiet", action="store_true", help="no live progress")
    p.add_argument("--seed", type=int, help="random seed (reproducible choices)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(prog="iotsim", description="MQTT device fleet simulator")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run a scenario file")
    p_run.add_argument("scenario", help="scenario YAML file")
    _common(p_run)
    p_s = sub.add_parser("sensors", help="preset: N sensors publishing periodic telemetry")
    p_s.add_argument("--devices", type=int, default=100, help="number of sensors")
    p_s.add_argument("--rate", type=_rate, default=1.0, help="messages per sensor, e.g. 1/s")
    p_s.add_argument("--qos", type=int, choices=(0, 1, 2), default=1)
    p_s.add_argument("--mqtt", choices=("3.1.1", "5"), default="3.1.1", help="MQTT version")
    p_s.add_argument("--payload-size", type=int, default=64, help="bytes (>= 24)")
    p_s.add_argument("--connect-rate", type=_rate, default=1000.0, help="connects/s")
    p_s.add_argument("--monitors", type=int, default=1, help="accounting subscribers")
    p_s.add_argument("--keepalive", type=int, default=60, help="seconds")
    _common(p_s)
    p_c = sub.add_parser("check", help="validate a scenario file")
    p_c.add_argument("scenario")
    return parser


def _apply_common(scenario: Scenario, args: argparse.Namespace) -> Scenario:
    changes: dict[str, object] = {}
    if args.duration is not None:
        changes["duration"] = args.duration
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.source_addresses:
        n = max(1, min(254, args.source_addresses))
        changes["source_addresses"] = tuple(f"127.0.0.{i}" for i in range(1, n + 1))
    if (args.cert is None) != (args.key is None):
        raise ScenarioError("--cert/--key", "a client certificate needs both --cert and --key")
    if args.password is not None and args.username is None:
        raise ScenarioError("--password", "needs --username")
    for flag, path in (("--cafile", args.cafile), ("--cert", args.cert), ("--key", args.key)):
        if path is not None and not os.access(path, os.R_OK):
            raise ScenarioError(flag, f"{path}: no such readable file")
    if args.tls or args.cafile or args.insecure or args.cert:
        changes["tls"] = TlsSpec(enabled=True, ca_file=args.cafile or scenario.tls.ca_file,
                                 insecure=args.insecure or scenario.tls.insecure,
                                 cert_file=args.cert or scenario.tls.cert_file,
                                 key_file=args.key or scenario.tls.key_file,
                                 server_hostname=scenario.tls.server_hostname)
    if args.username is not None:
        # Every device and monitor logs in as this user (as mosquitto_pub -u/-P).
        changes["groups"] = tuple(replace(g, username=args.username, password=args.password)
                                  for g in scenario.groups)
        changes["monitors"] = replace(scenario.monitors, username=args.username,
                                      password=args.password)
    return scenario.with_overrides(**changes) if changes else scenario


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``iotsim`` console script."""
    args = build_parser().parse_args(argv)
    err = Console(stderr=True)
    try:
        if args.command == "check":
            sc = load_scenario(args.scenario)
            print(f"{sc.name}: {sc.device_count} devices in {len(sc.groups)} groups "
                  f"({', '.join(f'{g.name}={g.count} {g.behaviour}' for g in sc.groups)}), "
                  f"{sc.monitors.count} monitors, {len(sc.stages)} stages, "
                  f"{len(sc.faults)} faults, duration {sc.duration:g}s")
            return 0
        if args.command == "run":
            scenario = load_scenario(args.scenario)
        else:
            if args.devices < 1:
                raise ScenarioError("--devices", "must be >= 1")
            scenario = sensors_preset(
                devices=args.devices, rate=args.rate, qos=args.qos,
                version=5 if args.mqtt == "5" else 4, payload_size=args.payload_size,
                duration=args.duration or 30.0, connect_rate=args.connect_rate,
                monitors=args.monitors, keepalive=args.keepalive)
        scenario = _apply_common(scenario, args)
    except ScenarioError as exc:  # ScenarioErrors: every error of the file, in file order
        for error in getattr(exc, "errors", (exc,)):
            err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False,
                      soft_wrap=True)
        return 2
    if args.workers < 1:
        err.print("[red]error:[/red] --workers must be >= 1")
        return 2
    report = run(scenario, args.host, args.port, workers=args.workers,
                 report_dir=args.report, live=not args.quiet, table=True)
    if args.report:
        Console().print(f"report: {args.report}/report.json, {args.report}/report.html")
    connected = report["devices"]["connected"]
    return 0 if report["ok"] and connected > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
