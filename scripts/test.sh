#!/usr/bin/env bash
# The whole check, as CI runs it: lint (ruff), types (mypy --strict), tests (pytest).
#
#   bash scripts/test.sh [PYTEST ARGS...]      e.g. bash scripts/test.sh -k config -x
#
# Idempotent and safe on a fresh Debian machine with Python >= 3.11:
#   * installs the Debian packages mosquitto and mosquitto-clients (interop and bridge
#     tests), openssl (bridge TLS test) and chromium and chromium-driver (the admin
#     dashboard's browser tests) when
#     missing, and python3-venv when venv cannot bootstrap pip; only as root or with
#     password-less sudo, otherwise it says what is missing and carries on;
#   * creates .venv when missing and installs the project with its test extras, first as
#     pure Python (IOTBROKER_PURE=1) for the protocol-level tests, then with the hot
#     modules compiled by mypyc (setup.py; pure Python where no C compiler) for all tests;
#   * creates .venv-amqtt (amqtt's client, for the interop tests) when missing;
#   * runs every step, prints a summary, and exits non-zero if any step failed
#     (pytest collecting no tests counts as a failure).
# Environment: PYTHON (default python3) picks the interpreter used to create .venv.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv

log() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 127
    fi
}

have_mosquitto() {
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]
}

# --- system packages ---------------------------------------------------------------------
debs=()
if ! command -v mosquitto_pub >/dev/null 2>&1 || ! have_mosquitto; then
    debs+=(mosquitto mosquitto-clients)
fi
# tests/admin/test_dashboard.py drives Debian's Chromium through its chromedriver (the
# paths are fixed there: /usr/bin/chromium, /usr/bin/chromedriver); no browser download.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    debs+=(chromium chromium-driver)
fi
if ! command -v openssl >/dev/null 2>&1; then
    debs+=(openssl)  # the bridge TLS test makes its certificates with the openssl CLI
fi
if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
    debs+=(python3-venv)
fi
if [ "${#debs[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1 && as_root true; then
        log "installing Debian packages: ${debs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        as_root apt-get update -q || exit 1
        as_root apt-get install -y -q --no-install-recommends "${debs[@]}" || exit 1
        # The Debian package starts a system mosquitto on port 1883; we only want the
        # binaries (the tests start their own brokers on free ports).
        if [[ " ${debs[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null 2>&1 \
            && systemctl is-active --quiet mosquitto 2>/dev/null; then
            as_root systemctl stop mosquitto || true
        fi
    else
        echo "warning: missing Debian packages (${debs[*]}) and no root/sudo to install them;" \
             "tests that need them will be skipped or fail" >&2
    fi
fi

# --- virtual environment -------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "error: $PYTHON is $("$PYTHON" -V 2>&1); iotbroker needs Python >= 3.11" >&2
        exit 1
    }
    "$PYTHON" -m venv "$VENV" || exit 1
fi
# Two builds of the same source (setup.py): pure Python, and the hot modules compiled by
# mypyc (what `pip install` gives where a C compiler is present). The pure build is
# installed first and runs the protocol-level tests; the compiled build then runs all.
install() {  # install [ENV=VALUE ...]
    env "$@" "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
}
log "installing iotbroker (pure Python build) with test extras"
install IOTBROKER_PURE=1 || exit 1

# --- amqtt's client, for tests/interop/test_amqtt_client.py --------------------------------
# amqtt pins dependency versions of its own, so it gets a venv of its own (never .venv).
# Created only when missing or broken; if it cannot be installed, those tests fail and say so.
AMQTT_VENV=.venv-amqtt
AMQTT_VERSION=0.12.1
if ! "$AMQTT_VENV/bin/python" -c 'import amqtt.client' >/dev/null 2>&1; then
    log "creating $AMQTT_VENV with amqtt==$AMQTT_VERSION"
    rm -rf "$AMQTT_VENV"
    { "$VENV/bin/python" -m venv "$AMQTT_VENV" \
        && "$AMQTT_VENV/bin/python" -m pip install -q --disable-pip-version-check \
            "amqtt==$AMQTT_VERSION"; } \
        || echo "warning: could not install amqtt into $AMQTT_VENV;" \
                "tests/interop/test_amqtt_client.py will fail" >&2
fi

# --- checks --------------------------------------------------------------------------------
failed=()

log "ruff check iotbroker tests devices-sim benchmarks"
"$VENV/bin/ruff" check iotbroker tests devices-sim benchmarks || failed+=(ruff)

log "mypy (strict, files from pyproject.toml)"
"$VENV/bin/mypy" || failed+=(mypy)

log "performance guard (codec and routing ratios against a reference loop)"
"$VENV/bin/python" benchmarks/guard.py || failed+=("perf guard")

run_pytest() {  # run_pytest LABEL [PYTEST ARGS...]
    local label=$1
    shift
    log "pytest -q $* ($label, $("$VENV/bin/iotbroker" --version))"
    "$VENV/bin/pytest" -q "$@"
    local status=$?
    if [ "$status" -eq 5 ]; then
        echo "error: pytest collected no tests" >&2
    fi
    [ "$status" -eq 0 ] || failed+=("pytest $label (exit $status)")
}

# Pure Python: the tests of the modules mypyc compiles (codec, protocol, core) and the
# wire-level conformance suite. Skipped when pytest arguments were given.
if [ "$#" -eq 0 ]; then
    run_pytest "pure Python" tests/codec tests/protocol tests/core tests/fuzz tests/conformance
fi

log "installing iotbroker (mypyc build)"
if install; then
    all_compiled='from iotbroker import build
raise SystemExit(len(build.compiled_modules()) != len(build.COMPILED_MODULES))'
    if command -v cc >/dev/null 2>&1 && ! "$VENV/bin/python" -c "$all_compiled"; then
        echo "error: a C compiler is present but the compiled build did not load:" \
             "$("$VENV/bin/iotbroker" --version)" >&2
        failed+=("mypyc build")
    fi
else
    failed+=("install (mypyc build)")
fi
run_pytest "default build" "$@"

echo
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "OK: ruff, mypy and pytest passed"
