#!/usr/bin/env bash
# bench/agent-alone.sh: the agent alone, capture file -> packet summaries published to a fresh
# local JetStream (file storage, nats.conf with other ports), no consumers (issue 3: at least
# 1.5 M packets/s on the 2-core machine, agent memory under 256 MB whatever the file size).
#
#   bench/agent-alone.sh [AGENT [CAPTURE...]]   # default bin/agent, .cache/bench.pcap
#
# For each capture (a file or a directory of them), RUNS times (default 3): a fresh store,
# nats-server started and ready, then `AGENT -pcap CAPTURE -replay-speed 0` under
# /usr/bin/time. Prints one line per run: frames, wall seconds of the agent process (start-up
# and the wait for the last acks included), packets/s, the same from the agent's "agent started"
# to its "capture done" log line (connect and stream set-up left out), agent CPU seconds (user + system) and
# peak RSS (/usr/bin/time %M), nats-server CPU seconds during the run (/proc/PID/stat), the
# load average before the run, and the share of two cores' CPU time that agent + nats-server
# used over that wall time. Frames per capture: capinfos (cached in .cache/<name>.frames).
# Environment: RUNS, NATS_PORT (random free port), AGENT_ARGS (extra agent flags).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
agent=${1:-bin/agent}
shift || true
[ $# -gt 0 ] || set -- .cache/bench.pcap
work=$(mktemp -d /tmp/agent-alone.XXXXXX)
nats=$(command -v nats-server || echo "$root/bin/nats-server")
tck=$(getconf CLK_TCK)
port=${NATS_PORT:-$(( (RANDOM % 20000) + 30000 ))}
mon=$((port + 1))
npid=
cleanup() { [ -n "$npid" ] && kill "$npid" 2>/dev/null && wait "$npid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cpu_of() { awk -v t="$tck" '{ sub(/^.*\) /, ""); split($0, f, " "); printf "%.2f", (f[12] + f[13]) / t }' "/proc/$1/stat"; }
frames_of() { # frames of a capture file or of a directory of them, by capinfos
  local c=$1 n=0 f cache
  cache=$root/.cache/$(basename "$c").frames
  if [ -s "$cache" ] && [ "$cache" -nt "$c" ]; then cat "$cache"; return; fi
  if [ -d "$c" ]; then
    for f in "$c"/*; do n=$((n + $(capinfos -M -c -T -r "$f" | awk -F'\t' '{print $2}'))); done
  else n=$(capinfos -M -c -T -r "$c" | awk -F'\t' '{print $2}'); fi
  mkdir -p "$root/.cache"; echo "$n" >"$cache"; echo "$n"
}
for cap in "$@"; do
  frames=$(frames_of "$cap")
  for run in $(seq "${RUNS:-3}"); do
    rm -rf "$work/store"
    sed -E -e "s|^port: .*|port: $port|" -e "s|^http: [^ ]*|http: 127.0.0.1:$mon|" \
      -e "s|store_dir: .*|store_dir: \"$work/store\"|" nats.conf >"$work/nats.conf"
    "$nats" -c "$work/nats.conf" >"$work/nats.log" 2>&1 &
    npid=$!
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$mon/healthz?js-enabled-only=true" >/dev/null 2>&1 && break; sleep 0.1; done
    load=$(cut -d' ' -f1 /proc/loadavg)
    n0=$(cpu_of "$npid")
    /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$agent" -nats.url "nats://127.0.0.1:$port" \
      -http.addr 127.0.0.1:0 -log.level info -sensor bench -replay-speed 0 -pcap "$cap" ${AGENT_ARGS:-} 2>"$work/agent.log" \
      || { echo "agent failed:"; cat "$work/agent.log"; exit 1; }
    n1=$(cpu_of "$npid")
    kill "$npid"; wait "$npid" 2>/dev/null || true; npid=
    read -r wall usr sys rss <"$work/time"
    logt() { date -d "$(grep -m1 "\"msg\":\"$1\"" "$work/agent.log" | sed -E 's/^\{"time":"([^"]+)".*/\1/')" +%s.%N 2>/dev/null || echo 0; }
    ts=$(logt "agent started") te=$(logt "capture done")
    awk -v c="$cap" -v fr="$frames" -v w="$wall" -v u="$usr" -v s="$sys" -v r="$rss" -v a="$n0" -v b="$n1" -v l="$load" -v ts="$ts" -v te="$te" 'BEGIN {
      ac = u + s; nc = b - a; cw = te - ts
      printf "%s: %d frames, wall %.2f s, %.0f packets/s (started -> capture done %.2f s, %.0f/s), agent CPU %.2f s (user %.2f, sys %.2f), peak RSS %.0f MiB, nats-server CPU %.2f s, load %s, CPU (agent + nats-server) / (2 cores x wall) = %.0f%%\n",
        c, fr, w, fr / w, cw, (cw > 0 ? fr / cw : 0), ac, u, s, r / 1024, nc, l, 100 * (ac + nc) / (2 * w) }'
  done
done
