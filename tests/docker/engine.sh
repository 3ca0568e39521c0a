#!/usr/bin/env bash
# A private Docker engine for the Docker backend tests, with images built on this machine (no registry needed).
#
#   tests/docker/engine.sh COMMAND [ARG...]   start the engine, build the images, run COMMAND, stop the engine
#   tests/docker/engine.sh --build            start the engine, build the images, stop the engine
#
# COMMAND runs with
#   DOCKER_HOST                      the engine's private socket (nothing listens on /var/run/docker.sock)
#   TESTCONTAINERS_RYUK_DISABLED     true: Ryuk's image cannot be pulled here; the plugin's labels do its job
#   LLMTRACE_POSTGRES_IMAGE, LLMTRACE_PHOENIX_IMAGE, LLMTRACE_OLLAMA_IMAGE   the local images (see images.sh)
#   LLMTRACE_TEST_APP_IMAGE          the reference gateway's image (fixtures/service), for llmtrace_app_image
# Where no engine can start (not root; no dockerd and no apt-get), COMMAND still runs, with LLMTRACE_TEST_DOCKER_SKIP
# saying why, so the Docker tests are skipped with that reason instead of silently.
#
# The engine is stopped when COMMAND ends, when a step here fails, and on SIGTERM, SIGINT and SIGHUP; a signal is
# passed on to COMMAND first (SIGINT as SIGTERM: background jobs ignore SIGINT), so pytest removes its containers
# before the engine goes away.
#
# State lives in LLMTRACE_DOCKER_DIR (default /var/cache/llmtrace-docker), outside the repository: the data-root
# (images survive between runs, so a warm run only starts the engine), the debootstrap roots the images start from,
# and the engine's socket, pidfile and log under run/. `rm -rf` it to start over.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${LLMTRACE_DOCKER_DIR:-/var/cache/llmtrace-docker}
RUN="$STATE/run"
SOCK="$RUN/docker.sock"
DOCKERD_PID=""
CHILD=""

log() { printf 'engine.sh: %s\n' "$*" >&2; }

# -- can an engine start here? ----------------------------------------------------------------------------------------

why_no_engine() {
    if [ "$(id -u)" != 0 ]; then
        echo "tests/docker/engine.sh needs root to start dockerd (running as uid $(id -u))"
    elif ! command -v dockerd >/dev/null && ! command -v apt-get >/dev/null; then
        echo "no dockerd on PATH and no apt-get to install Debian's docker.io"
    fi
}

install_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]} from Debian"
    # Without a policy-rc.d that refuses, the package starts a daemon on the default socket.
    local made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=yes
    fi
    local status=0
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >"$STATE/apt.log" 2>&1 ||
        status=$?
    [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
    if [ "$status" != 0 ]; then
        tail -n 20 "$STATE/apt.log" >&2
        return "$status"
    fi
}

# -- the engine -------------------------------------------------------------------------------------------------------

stop_stale_engine() {
    # A dockerd left by an engine.sh that was SIGKILLed still holds the data-root; the lock says no run owns it.
    local pid
    pid=$(cat "$RUN/dockerd.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$SOCK"; then
        log "stopping the dockerd a killed run left behind (pid $pid)"
        stop_pid "$pid"
    fi
}

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    log "dockerd (pid $pid) did not stop within 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

start_engine() {
    mkdir -p "$RUN" "$STATE/data"
    stop_stale_engine
    rm -f "$SOCK"
    dockerd -H "unix://$SOCK" --data-root "$STATE/data" --exec-root "$RUN/exec" --pidfile "$RUN/dockerd.pid" \
        >"$RUN/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    export DOCKER_HOST="unix://$SOCK"
    local i
    for i in $(seq 1 120); do
        if docker version >/dev/null 2>&1; then
            log "dockerd $(docker version --format '{{.Server.Version}}') ready on $DOCKER_HOST"
            return 0
        fi
        if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
            break
        fi
        sleep 0.5
    done
    log "dockerd did not start; the end of $RUN/dockerd.log:"
    tail -n 30 "$RUN/dockerd.log" >&2
    return 1
}

stop_engine() {
    local status=$?
    if [ -n "$DOCKERD_PID" ]; then
        stop_pid "$DOCKERD_PID"
        wait "$DOCKERD_PID" 2>/dev/null || true
        DOCKERD_PID=""
        log "dockerd stopped"
    fi
    exit "$status"
}

on_signal() {
    local forward=$1 code=$2
    if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then
        log "passing SIG$forward on to the command (pid $CHILD)"
        kill -s "$forward" "$CHILD" 2>/dev/null || true
    else
        exit "$code"
    fi
}

run_command() {
    [ $# -gt 0 ] || return 0
    "$@" &
    CHILD=$!
    local status
    while :; do
        status=0
        wait "$CHILD" || status=$?
        # wait returns early when a trapped signal arrives; the command is still cleaning up, so wait again
        kill -0 "$CHILD" 2>/dev/null || break
    done
    CHILD=""
    return "$status"
}

main() {
    if [ "${1:-}" = "--build" ]; then
        shift
        [ $# -eq 0 ] || { log "--build takes no command"; return 2; }
    elif [ $# -eq 0 ]; then
        sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
        return 2
    fi
    local why
    why=$(why_no_engine)
    if [ -n "$why" ]; then
        log "no engine: $why"
        export LLMTRACE_TEST_DOCKER_SKIP="$why"
        run_command "$@"
        return
    fi
    mkdir -p "$STATE"
    exec 9>"$STATE/engine.lock"
    if ! flock -n 9; then
        log "another engine.sh holds $STATE/engine.lock; waiting for it"
        flock 9
    fi
    trap stop_engine EXIT
    trap 'on_signal TERM 143' TERM
    trap 'on_signal TERM 130' INT
    trap 'on_signal HUP 129' HUP
    install_packages
    start_engine
    # shellcheck source=tests/docker/images.sh
    . "$HERE/images.sh"
    build_images
    export TESTCONTAINERS_RYUK_DISABLED=true
    export LLMTRACE_POSTGRES_IMAGE="$POSTGRES_IMAGE" LLMTRACE_PHOENIX_IMAGE="$PHOENIX_IMAGE"
    export LLMTRACE_OLLAMA_IMAGE="$OLLAMA_IMAGE"
    # Not LLMTRACE_APP_IMAGE: that is the setting, and would send every golden case of the run to the image.
    export LLMTRACE_TEST_APP_IMAGE="$APP_IMAGE"
    run_command "$@"
}

main "$@"
