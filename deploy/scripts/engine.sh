#!/usr/bin/env bash
# A docker engine for builds and tests on a machine without one (CI; Debian's docker.io).
#
#   eval "$(deploy/scripts/engine.sh start)"   # prints: export DOCKER_HOST=...; STAMEN_ENGINE_STARTED=0|1
#   deploy/scripts/engine.sh install           # apt-get install docker.io docker-compose debootstrap
#   deploy/scripts/engine.sh stop              # stops the dockerd that `start` started (by its PID file)
#
# `start` reuses a reachable engine (DOCKER_HOST or the default socket). Otherwise it starts dockerd
# with its own data root and socket under ${STAMEN_CACHE:-/var/tmp/stamen-ci}/docker and leaves the
# host's network alone: no iptables rules, no ip_forward change, no docker0 bridge (compose makes
# its own network; published ports go through docker-proxy). Every wait is bounded.
set -euo pipefail
CACHE="${STAMEN_CACHE:-/var/tmp/stamen-ci}"
ROOT="$CACHE/docker"
SOCK="unix://$ROOT/docker.sock"
PIDFILE="$ROOT/dockerd.pid"

reachable() { timeout 20 docker info >/dev/null 2>&1; }

install_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "engine: installing ${missing[*]}" >&2
  timeout 300 apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

start() {
  if reachable; then
    echo "export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}; export STAMEN_ENGINE_STARTED=0"
    return 0
  fi
  export DOCKER_HOST="$SOCK"
  if reachable; then  # ours, from an earlier run
    echo "export DOCKER_HOST=$SOCK; export STAMEN_ENGINE_STARTED=0"
    return 0
  fi
  command -v dockerd >/dev/null || { echo "engine: dockerd is not installed" >&2; return 1; }
  mkdir -p "$ROOT/data" "$ROOT/exec"
  rm -f "$ROOT/docker.sock" "$PIDFILE"
  setsid dockerd --data-root "$ROOT/data" --exec-root "$ROOT/exec" --pidfile "$PIDFILE" -H "$SOCK" \
    --iptables=false --ip-forward=false --bridge=none >"$ROOT/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 120); do
    reachable && { echo "export DOCKER_HOST=$SOCK; export STAMEN_ENGINE_STARTED=1"; return 0; }
    sleep 0.5
  done
  echo "engine: dockerd did not answer within 60 s:" >&2
  tail -20 "$ROOT/dockerd.log" >&2
  return 1
}

stop() {
  [ -s "$PIDFILE" ] || return 0
  local pid
  pid="$(cat "$PIDFILE")"
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  echo "engine: dockerd $pid did not stop within 30 s" >&2
  return 1
}

case "${1:-}" in
  install) install_packages ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
