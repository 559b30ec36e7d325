#!/usr/bin/env bash
# Runs CMD... with a local S3-compatible server (s3s-fs) started for it, and stops the server
# afterwards. Installs s3s-fs into ~/.cache/cohort/ on first use. Exports
# COHORT_TEST_S3_URL=s3://<bucket>/<prefix> and the AWS_* variables the S3 client reads, and
# COHORT_TEST_S3S_BIN (the server's binary, for tests that start their own elsewhere, such as
# inside a network namespace), then exits with CMD's exit code.
#
#   scripts/with-s3.sh cargo test -p cohort-checkpoint
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 CMD [ARGS...]" >&2
    exit 2
fi

S3S_VERSION=0.14.1
S3S_ROOT="${COHORT_S3S_ROOT:-$HOME/.cache/cohort/s3s-fs-$S3S_VERSION}"
S3S_BIN="$S3S_ROOT/bin/s3s-fs"

if [[ ! -x "$S3S_BIN" ]]; then
    echo "==> installing s3s-fs $S3S_VERSION into $S3S_ROOT (once; takes a few minutes)" >&2
    cargo install "s3s-fs@$S3S_VERSION" --features binary --locked --root "$S3S_ROOT" >&2
fi

# A free port: bind port 0 and read back what the kernel chose.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null && return
    # Fallback without python: probe ports until one does not answer.
    local p
    for p in $(seq 39000 39999); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    echo "no free port found" >&2
    return 1
}

PORT="$(free_port)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cohort-s3.XXXXXX")"
BUCKET=cohort-test
mkdir -p "$WORK/root/$BUCKET"
ACCESS_KEY=cohort-test-key
SECRET_KEY=cohort-test-secret

"$S3S_BIN" --host 127.0.0.1 --port "$PORT" --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" \
    "$WORK/root" >"$WORK/server.log" 2>&1 &
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
        echo "s3s-fs exited early; its log:" >&2
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
    echo "s3s-fs did not answer on 127.0.0.1:$PORT within 30 s; its log:" >&2
    cat "$WORK/server.log" >&2
    exit 1
fi

export COHORT_TEST_S3_URL="s3://$BUCKET/cohort-test"
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT"
export AWS_ACCESS_KEY_ID="$ACCESS_KEY"
export AWS_SECRET_ACCESS_KEY="$SECRET_KEY"
export AWS_REGION=us-east-1
export AWS_ALLOW_HTTP=true
export COHORT_TEST_S3S_BIN="$S3S_BIN"
echo "==> s3s-fs $S3S_VERSION listening on $AWS_ENDPOINT_URL, COHORT_TEST_S3_URL=$COHORT_TEST_S3_URL" >&2

set +e
"$@"
status=$?
set -e
exit "$status"
