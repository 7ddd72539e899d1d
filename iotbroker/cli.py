"""Command line: ``iotbroker [run] ...``, ``iotbroker check-config FILE``, ``iotbroker passwd``.

Exit codes: 0 success; 1 an operation failed (passwords differ, unknown user, I/O
error); 2 bad usage or a configuration error (printed as ``iotbroker: config error:
MESSAGE``, without a traceback). ``run`` returns what the broker returns.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from iotbroker import __version__
from iotbroker.config import LOOPBACK_HOST, BrokerConfig, load_config
from iotbroker.errors import ConfigError

__all__ = ["console_main", "main"]

PROG = "iotbroker"
COMMANDS = ("run", "check-config", "passwd")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _VersionAction(argparse.Action):
    """``--version``: the version, the build (mypyc-compiled or pure Python) and the
    interpreter."""

    def __init__(self, option_strings: list[str], dest: str, **_: object) -> None:
        super().__init__(option_strings, dest, nargs=0,
                         help="show the version and the build (compiled or pure Python)")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from iotbroker.build import describe, interpreter  # noqa: PLC0415 (imports the hot modules)

        print(f"{PROG} {__version__} ({describe()}; {interpreter()})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="An MQTT 3.1.1 and 5.0 broker. Without a command, runs the broker.",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the broker (the default command)")
    run.add_argument("--config", "-c", metavar="FILE",
                     help="YAML configuration file (default: built-in defaults, which "
                          "listen on 127.0.0.1:1883 only)")
    run.add_argument("--listen", "-l", metavar="HOST:PORT", action="append",
                     help="listen for plain MQTT on HOST:PORT ([::1]:1883 for IPv6; "
                          "PORT alone is 127.0.0.1:PORT; 0.0.0.0:1883 accepts devices on "
                          "the network); repeatable; replaces the configured listeners")
    run.add_argument("--data-dir", metavar="DIR", help="storage directory (storage.path)")
    run.add_argument("--log-level", metavar="LEVEL",
                     help="DEBUG, INFO, WARNING, ERROR or CRITICAL (logging.level)")
    run.add_argument("--workers", metavar="N",
                     help="broker processes sharing the listeners, or 'auto' for the CPU "
                          "count (workers; docs/cluster.md)")
    # Set by the --workers supervisor on each worker it starts (server/workers.py).
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    run.add_argument("--worker-ports", default="{}", help=argparse.SUPPRESS)
    run.add_argument("--worker-nats", help=argparse.SUPPRESS)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", metavar="FILE")
    check.add_argument("--no-files", action="store_true",
                       help="do not open the password, ACL and TLS files it names")

    passwd = sub.add_parser("passwd", help="add, change or delete a user in a password file")
    passwd.add_argument("file", metavar="FILE", help="password file (created if missing)")
    passwd.add_argument("user", metavar="USER")
    mode = passwd.add_mutually_exclusive_group()
    mode.add_argument("-b", dest="password", metavar="PASSWORD",
                      help="the password (visible to other local users via ps; "
                           "without -b it is asked twice)")
    mode.add_argument("--delete", "-D", action="store_true", help="delete USER")
    mode.add_argument("--generate", "-g", action="store_true",
                      help="generate a random device secret (32 bytes, URL-safe base64), "
                           "print it once on stdout and store it with a cheap salted "
                           "SHA-512 (for machines; people's passwords keep PBKDF2)")
    passwd.add_argument("--iterations", type=int, default=None,
                        help="PBKDF2 iterations (default 210000)")
    passwd.add_argument("--scram-iterations", type=int, default=None, metavar="N",
                        help="SCRAM-SHA-256 iterations (default 4096, the RFC 7677 minimum)")
    passwd.add_argument("--no-scram", action="store_true",
                        help="store no SCRAM-SHA-256 keys (the user cannot use MQTT 5.0 "
                             "enhanced authentication)")
    return parser


#: Who prints errors: ``iotbroker``, or ``iotbroker [w3]`` in worker 3 of ``--workers``
#: (its lines share the supervisor's output with the other workers').
_WHO = [PROG]


def _error(message: str) -> None:
    print(f"{_WHO[0]}: {message}", file=sys.stderr)


def _config_error(exc: ConfigError) -> int:
    # One line per error (ConfigErrors holds every error of a file, in file order).
    for error in getattr(exc, "errors", (exc,)):
        _error(f"config error: {error}")
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``iotbroker`` command; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and not args_list[0].startswith("-") and args_list[0] not in COMMANDS:
        # `iotbroker frobnicate`: not "unrecognized arguments" from `run` (issue 18).
        _error(f"unknown command {args_list[0]!r}; the commands are: {', '.join(COMMANDS)} "
               f"(`{PROG} COMMAND --help` for each; without a command, `run`)")
        return EXIT_USAGE
    if not args_list or args_list[0] not in (*COMMANDS, "-h", "--help", "--version"):
        args_list.insert(0, "run")
    try:
        args = build_parser().parse_args(args_list)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "check-config":
            return _check_config(args.file, check_files=not args.no_files)
        if args.command == "passwd":
            return _passwd(args)
        return _run(args, args_list)
    except ConfigError as exc:
        return _config_error(exc)


def console_main() -> None:
    """The ``iotbroker`` command and ``python -m iotbroker``: :func:`main`, then exit.

    After the broker logged "stopped" (storage closed, logs flushed) the process ends at
    once with ``os._exit``: tearing down the interpreter would free every session,
    retained message and trie node one by one (seconds for a large broker) and join
    password-check threads still hashing for connections that are gone (issue 18).
    """
    code = main()
    if _RAN_BROKER:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


# run ----------------------------------------------------------------------------------

#: Set when ``main`` ran the broker (``console_main`` then skips interpreter teardown).
_RAN_BROKER = False


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT`` or ``PORT``.

    Without a host the listener is on loopback only (127.0.0.1), as mosquitto 2.x's
    ``mosquitto -p PORT``: opening the broker to the network is asked for by name
    (``0.0.0.0:PORT``).
    """
    host, port_text = LOOPBACK_HOST, value
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or not value[end + 1:].startswith(":"):
            raise ConfigError("--listen", value, "is not [IPV6]:PORT")
        host, port_text = value[1:end], value[end + 2:]
    elif ":" in value:
        host, _, port_text = value.rpartition(":")
        if ":" in host:
            raise ConfigError("--listen", value, "is not HOST:PORT (write IPv6 as [::1]:1883)")
        host = host or LOOPBACK_HOST
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError("--listen", value,
                          "is not HOST:PORT with a port in 0–65535 (0 picks a free port)")
    return host, int(port_text)


def build_config(args: argparse.Namespace) -> BrokerConfig:
    """The configuration file (or defaults) with the command-line overrides applied."""
    overrides: dict[str, Any] = {}
    if args.listen:
        overrides["listeners"] = [
            {"type": "tcp", "host": host, "port": port}
            for host, port in (parse_listen(v) for v in args.listen)
        ]
    if args.data_dir is not None:
        overrides["storage"] = {"path": args.data_dir}
    if args.log_level is not None:
        overrides["logging"] = {"level": args.log_level}
    workers = getattr(args, "workers", None)
    if workers is not None:
        overrides["workers"] = int(workers) if workers.isdigit() else workers
    config = load_config(args.config, overrides or None)
    if getattr(args, "worker", None) is not None:
        from iotbroker.server.workers import worker_config  # noqa: PLC0415

        config = worker_config(config, args.worker, json.loads(args.worker_ports),
                               args.worker_nats)
    return config


def _without_workers(argv: list[str]) -> list[str]:
    """The ``run`` command line without ``--workers N`` (for the workers themselves)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    global _RAN_BROKER  # noqa: PLW0603 (one flag for console_main)
    if args.worker is not None:
        from iotbroker.server.logsetup import set_worker  # noqa: PLC0415

        set_worker(args.worker)  # before anything is logged or printed
        _WHO[0] = f"{PROG} [w{args.worker}]"
    config = build_config(args)
    from iotbroker.server.broker import run_broker  # noqa: PLC0415 (only `run` needs the server)
    from iotbroker.server.workers import (  # noqa: PLC0415
        CANNOT_START,
        run_workers,
        worker_count,
    )

    _RAN_BROKER = True
    try:
        if args.worker is None and worker_count(config.workers) > 1:
            from iotbroker.server.logsetup import setup_logging  # noqa: PLC0415

            setup_logging(config.logging)
            return run_workers(config, _without_workers(argv))
        if args.worker is None:
            return run_broker(config, reload=lambda: build_config(args))
        code = run_broker(config, reload=lambda: build_config(args), reuse_port=True)
        return CANNOT_START if code else 0  # the supervisor gives up (server/workers.py)
    except KeyboardInterrupt:
        return 130


# check-config -------------------------------------------------------------------------


def _check_config(path: str, *, check_files: bool) -> int:
    config = load_config(path)
    if check_files:
        _check_files(config)
        for warning in _file_warnings(config):
            _error(f"warning: {warning}")
    print(f"OK: {path}")
    return EXIT_OK


def _check_files(config: BrokerConfig) -> None:
    from iotbroker.auth.loader import load_auth  # noqa: PLC0415
    from iotbroker.server.preflight import tls_file_errors  # noqa: PLC0415

    load_auth(config.auth)
    errors = tls_file_errors(config)
    if errors:
        raise errors[0]


def _file_warnings(config: BrokerConfig) -> list[str]:
    """What is valid but probably not meant: ACL lines that look like typos (``topic rw
    home/#`` is a rule for the filter ``rw home/#``), secret files open to other users."""
    from iotbroker.auth.acl import acl_warnings  # noqa: PLC0415
    from iotbroker.file_modes import exposed_mode, exposure_message  # noqa: PLC0415

    warnings: list[str] = []
    if config.auth.acl_file:
        with open(config.auth.acl_file, encoding="utf-8") as handle:
            warnings += acl_warnings(handle.read().splitlines(), config.auth.acl_file)
    secrets = [(config.auth.password_file, "auth.password_file: password file")]
    secrets += [(lst.tls.keyfile, f"listeners[{i}].tls.keyfile: TLS private key")
                for i, lst in enumerate(config.listeners)
                if lst.tls is not None and lst.tls.keyfile]
    if config.cluster is not None and config.cluster.credentials_file:
        secrets.append((config.cluster.credentials_file,
                        "cluster.credentials_file: NATS credentials (its NKey seed)"))
    for path, what in secrets:
        mode = exposed_mode(path) if path else None
        if path and mode is not None:
            warnings.append(exposure_message(path, what, mode))
    return warnings


# passwd -------------------------------------------------------------------------------


def _passwd(args: argparse.Namespace) -> int:
    from iotbroker.auth import passwords, scram  # noqa: PLC0415

    if args.delete:
        try:
            passwords.delete_user(args.file, args.user)
        except KeyError:
            _error(f"no user {args.user!r} in {args.file}")
            return EXIT_FAILED
        except OSError as exc:
            _error(f"cannot write {args.file}: {exc.strerror or exc}")
            return EXIT_FAILED
        print(f"deleted user {args.user!r} from {args.file}")
        return EXIT_OK

    if args.generate:
        return _passwd_generate(args)
    password: str | None = args.password
    if password is None:
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Reenter password: ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            _error("no password given")
            return EXIT_FAILED
        if password != again:
            _error("passwords do not match")
            return EXIT_FAILED
    if not password:
        _error("the password must not be empty")
        return EXIT_FAILED
    iterations = passwords.DEFAULT_ITERATIONS if args.iterations is None else args.iterations
    scram_iterations: int | None = (
        None if args.no_scram
        else scram.DEFAULT_ITERATIONS if args.scram_iterations is None
        else args.scram_iterations
    )
    try:
        added = passwords.set_password(args.file, args.user, password, iterations,
                                       scram_iterations)
    except ValueError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except OSError as exc:
        _error(f"cannot write {args.file}: {exc.strerror or exc}")
        return EXIT_FAILED
    verb = "added user" if added else "changed the password of"
    print(f"{verb} {args.user!r} in {args.file}")
    return EXIT_OK


def _passwd_generate(args: argparse.Namespace) -> int:
    from iotbroker.auth import passwords, scram  # noqa: PLC0415

    if args.iterations is not None:
        _error("--iterations does not apply to --generate (a generated secret is stored "
               "with one salted SHA-512; its 256 random bits protect it)")
        return EXIT_USAGE
    scram_iterations: int | None = (
        None if args.no_scram
        else scram.DEFAULT_ITERATIONS if args.scram_iterations is None
        else args.scram_iterations
    )
    try:
        added, secret = passwords.set_secret(args.file, args.user, scram_iterations)
    except ValueError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except OSError as exc:
        _error(f"cannot write {args.file}: {exc.strerror or exc}")
        return EXIT_FAILED
    # Only the secret goes to stdout (SECRET=$(iotbroker passwd F U --generate)).
    print(secret)
    verb = "added user" if added else "set a new secret for"
    print(f"{verb} {args.user!r} in {args.file} (generated secret, shown once)",
          file=sys.stderr)
    return EXIT_OK
