#!/usr/bin/env bash
# scripts/run.sh (make run): builds netwatch and starts the whole system on this machine:
# nats-server with JetStream (nats.conf, store in .run/nats), PostgreSQL at DATABASE_URL
# (brought up and the database created by scripts/pg.sh), then sink, detector, enricher,
# api and an agent, each waited for on its /readyz. Logs: .run/logs/<part>.log.
#
#   PCAP=file               replay the capture as fast as possible, keep the rest running
#   CAPTURE_INTERFACE=eth0  live capture interface (default: that of the default route)
#   DATABASE_URL=...        default postgres://netwatch:netwatch@127.0.0.1:5432/netwatch
#   SENSOR=name             the agent's sensor name (default: the agent's, the host name)
#   API_ADDR=host:port      the api and dashboard (default 127.0.0.1:8080)
#   READY_TIMEOUT=60        seconds each part may take to become ready
#   STOP_TIMEOUT=60         seconds each part may take to exit after SIGTERM at Ctrl-C
#   DRAIN_TIMEOUT=30        seconds to wait at Ctrl-C for a stage's input to drain before stopping it
#   NOBUILD=1               skip `make build` (make run has just built)
#
# A part that exits or is not ready in time stops the run with its log and exit status 1.
# Ctrl-C (SIGINT/SIGTERM) stops agent, enricher, detector, sink, api, nats in that order,
# each drained before the next, so nothing in flight is lost.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export DATABASE_URL=${DATABASE_URL:-postgres://netwatch:netwatch@127.0.0.1:5432/netwatch?sslmode=disable}
API_ADDR=${API_ADDR:-127.0.0.1:8080}
NATS_URL=nats://127.0.0.1:4222
NATS_MON=127.0.0.1:8222
NW_LOGDIR=$root/.run/logs
mkdir -p "$NW_LOGDIR" "$root/.run/nats"
# shellcheck source=lib.sh
. "$root/scripts/lib.sh"

stop_order=(agent enricher detector sink api nats)
stopping=
shutdown() { # shutdown EXIT_STATUS
  trap '' INT TERM
  [ -n "$stopping" ] && return
  stopping=1
  [ ${#NW_ORDER[@]} -gt 0 ] && nw_say "stopping in data-flow order: ${stop_order[*]}"
  # Each stage stops only once what feeds it has drained (its consumers have
  # nothing pending), so what is in flight reaches PostgreSQL now, not on the
  # next start. A stage that died is not waited for.
  nw_stop agent
  drain_wait enricher
  nw_stop enricher
  drain_wait detector sink-flows
  nw_stop detector
  drain_wait sink-flows sink-alerts sink-metrics
  nw_stop_all "${stop_order[@]}"
  [ ${#NW_ORDER[@]} -gt 0 ] && nw_say "stopped (logs in .run/logs)"
  exit "$1"
}
# drain_wait CONSUMER...: waits up to DRAIN_TIMEOUT seconds (30) until every
# named durable consumer has nothing pending, per the api's /api/v1/pipeline.
drain_wait() {
  local deadline=$((SECONDS + ${DRAIN_TIMEOUT:-30})) body c n left
  [ -n "${NW_PID[api]:-}" ] || return 0
  while :; do
    body=$(curl -fsS -m 2 "http://$API_ADDR/api/v1/pipeline" 2>/dev/null) || return 0
    left=
    for c in "$@"; do
      n=$(grep -oE "\"name\":\"$c\",\"durable\":(true|false),\"pending\":[0-9]+" <<<"$body" | grep -oE '[0-9]+$' || true)
      [ -n "$n" ] && [ "$n" != 0 ] && left+=" $c=$n"
    done
    [ -z "$left" ] && return 0
    if [ $SECONDS -ge $deadline ]; then
      nw_say "still pending after ${DRAIN_TIMEOUT:-30}s:$left (kept in JetStream for the next start)"
      return 0
    fi
    sleep 0.5
  done
}
trap 'echo; shutdown 0' INT TERM
trap 'rc=$?; [ -z "$stopping" ] && shutdown $rc' EXIT
fail() { nw_err "$*"; shutdown 1; }

# What to capture.
if [ -n "${PCAP:-}" ]; then
  case $PCAP in /*) ;; *) PCAP=$root/$PCAP ;; esac
  [ -r "$PCAP" ] || fail "PCAP=$PCAP: no such readable file"
  source_desc="replaying $PCAP as fast as possible"
  agent_args=(-pcap "$PCAP" -replay-speed 0)
else
  iface=${CAPTURE_INTERFACE:-$(ip route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i+1); exit}}')}
  [ -n "$iface" ] || fail "no default route to take the capture interface from: set CAPTURE_INTERFACE (or PCAP=file)"
  [ -e "/sys/class/net/$iface" ] || fail "CAPTURE_INTERFACE=$iface: no such interface ($(ls /sys/class/net | tr '\n' ' '))"
  if [ "$(id -u)" != 0 ] && ! grep -q cap_net_raw <(getcap "$root/bin/agent" 2>/dev/null); then
    nw_say "warning: live capture needs root or CAP_NET_RAW on bin/agent (sudo setcap cap_net_raw,cap_net_admin=eip bin/agent)"
  fi
  source_desc="capturing live on $iface"
  agent_args=(-interface "$iface")
fi
[ -n "${SENSOR:-}" ] && agent_args+=(-sensor "$SENSOR")

if [ "${NOBUILD:-}" != 1 ]; then
  nw_say "building (make build)"
  make -s build >/dev/null || fail "make build failed"
fi
for b in sink detector enricher api agent; do
  [ -x "bin/$b" ] || fail "bin/$b is missing: make build did not produce it"
done

# Nothing else may hold our ports: a second `make run` would fight the first.
for a in 127.0.0.1:4222 $NATS_MON "$API_ADDR" 127.0.0.1:9101 127.0.0.1:9102 127.0.0.1:9103 127.0.0.1:9104; do
  if nw_port_busy "$a"; then
    fail "$a is already in use (another make run? see: ss -ltnp | grep ${a##*:})"
  fi
done

nw_say "starting netwatch: $source_desc"

# 1. NATS with JetStream.
nats=$(nw_nats_server) || { scripts/setup.sh >&2 && nats=$(nw_nats_server); } || fail "no nats-server: run scripts/setup.sh"
nw_start nats "$nats" -c "$root/nats.conf"
nw_wait_ready nats "http://$NATS_MON/healthz?js-enabled-only=true" || shutdown 1

# 2. PostgreSQL (started and the database created if needed).
nw_say "checking PostgreSQL"
scripts/pg.sh || fail "PostgreSQL is not available at DATABASE_URL"

# 3. The stages, downstream first, so every stage finds its consumer waiting.
common=(-nats.url "$NATS_URL")
nw_start sink bin/sink "${common[@]}" -http.addr 127.0.0.1:9104 -database.url "$DATABASE_URL"
nw_wait_ready sink http://127.0.0.1:9104/readyz || shutdown 1
nw_start detector bin/detector "${common[@]}" -http.addr 127.0.0.1:9103
nw_wait_ready detector http://127.0.0.1:9103/readyz || shutdown 1
nw_start enricher bin/enricher "${common[@]}" -http.addr 127.0.0.1:9102
nw_wait_ready enricher http://127.0.0.1:9102/readyz || shutdown 1
nw_start api bin/api "${common[@]}" -http.addr "$API_ADDR" -database.url "$DATABASE_URL"
nw_wait_ready api "http://$API_ADDR/readyz" || shutdown 1

# 4. The agent. A replay may finish before its /readyz is ever seen.
nw_start agent bin/agent "${common[@]}" -http.addr 127.0.0.1:9101 "${agent_args[@]}"
replay_done=
set +e
nw_wait_ready agent http://127.0.0.1:9101/readyz "${PCAP:+exit-ok}"
rc=$?
set -e
case $rc in
  0) ;;
  3) replay_done=1 ;;
  *) shutdown 1 ;;
esac

host=${API_ADDR%:*}
case $host in ''|0.0.0.0|'[::]') host=127.0.0.1 ;; esac
url="http://$host:${API_ADDR##*:}"
nw_say "netwatch is ready: dashboard at $url"
nw_say "logs in .run/logs/, NATS monitoring at http://$NATS_MON; Ctrl-C stops everything"

# 5. Supervise: a part that dies stops the run; a finished replay does not.
announce_replay() {
  nw_say "replay of $PCAP finished; the rest keeps running (dashboard at $url)"
  drained=
}
drained=1
[ -n "$replay_done" ] && announce_replay
while :; do
  sleep 1 & wait $! || true
  for n in "${NW_ORDER[@]}"; do
    [ -n "${NW_DONE[$n]+x}" ] && continue
    nw_alive "${NW_PID[$n]}" && continue
    nw_reap "$n"
    if [ "$n" = agent ] && [ -n "${PCAP:-}" ] && [ "$NW_RC" = 0 ]; then
      announce_replay
      continue
    fi
    nw_err "$n exited with status $NW_RC"
    nw_tail "$n"
    shutdown 1
  done
  # After a replay, say once when every consumer has caught up (all flows stored).
  if [ -z "$drained" ]; then
    pending=$(curl -fsS -m 2 "$url/api/v1/pipeline" 2>/dev/null | grep -oE '"pending"[[:space:]]*:[[:space:]]*[0-9]+' | tail -1 | grep -oE '[0-9]+$' || true)
    if [ "$pending" = 0 ]; then
      nw_say "pipeline drained: every packet of the replay is in stored flows"
      drained=1
    fi
  fi
done
