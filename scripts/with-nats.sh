#!/usr/bin/env bash
# Runs CMD... with a local NATS server with JetStream started for it, and stops the server
# afterwards. Installs Debian's nats-server package on first use (as root, with apt-get).
# Exports COHORT_TEST_NATS_URL=nats://127.0.0.1:<port> and COHORT_TEST_NATS_BIN, then exits
# with CMD's exit code. Without a server (not root, no apt-get), CMD runs without the variable
# and the NATS tests say they skip (in CI they fail instead).
#
#   scripts/with-nats.sh cargo test --test ingress_nats
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 CMD [ARGS...]" >&2
    exit 2
fi

NATS_BIN="$(command -v nats-server || true)"
if [[ -z "$NATS_BIN" ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing Debian's nats-server package (once)" >&2
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y -qq nats-server >/dev/null 2>&1; then
            apt-get update -qq >/dev/null 2>&1 || true
            apt-get install -y -qq nats-server >/dev/null 2>&1 || true
        fi
        NATS_BIN="$(command -v nats-server || true)"
    fi
fi
if [[ -z "$NATS_BIN" ]]; then
    echo "==> nats-server is missing and cannot be installed here: running without it" >&2
    exec "$@"
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null && return
    local p
    for p in $(seq 42000 42999); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    echo "no free port found" >&2
    return 1
}

PORT="$(free_port)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cohort-nats.XXXXXX")"
"$NATS_BIN" -js -a 127.0.0.1 -p "$PORT" -sd "$WORK/jetstream" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

cleanup() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Wait until the port answers: at most 30 s, polling every 0.1 s.
ready=false
for _ in $(seq 1 300); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "nats-server exited early; its log:" >&2
        cat "$WORK/server.log" >&2
        exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        ready=true
        break
    fi
    sleep 0.1
done
if [[ "$ready" != true ]]; then
    echo "nats-server did not answer on 127.0.0.1:$PORT within 30 s; its log:" >&2
    cat "$WORK/server.log" >&2
    exit 1
fi

export COHORT_TEST_NATS_URL="nats://127.0.0.1:$PORT"
export COHORT_TEST_NATS_BIN="$NATS_BIN"
echo "==> $("$NATS_BIN" --version 2>&1 | head -1) with JetStream on $COHORT_TEST_NATS_URL" >&2

set +e
"$@"
status=$?
set -e
exit "$status"
