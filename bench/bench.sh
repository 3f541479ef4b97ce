#!/usr/bin/env bash
# bench/bench.sh (make bench): end-to-end throughput of netwatch on the benchmark capture,
# next to nfpcapd, argus and tshark on the same file, in one run.
#
#   netwatch end to end: a fresh JetStream store and a fresh database (netwatch_bench),
#     nats, sink, detector, enricher and api started and ready; the clock runs from the start
#     of `bin/agent -pcap CAPTURE -sensor bench` until the flows stored in PostgreSQL hold
#     every IP packet of the capture (sum of orig_pkts + resp_pkts = the IP frames tshark
#     counts) and every consumer has drained (api /api/v1/pipeline pending 0).
#   agent → JetStream alone: the agent on the capture into a fresh local JetStream, no consumers.
#   agent -summary: the agent's decode of the file alone, no broker (upper bound of intake).
#   nfpcapd -r (nfdump 1.7), argus -r, tshark -q -z conv,ip: flows from the same file.
#
# Results: a table on stdout and in bench/out/results.md; logs in bench/out/logs.
# Environment: BENCH_PCAP (default .cache/bench.pcap, built by
# $NETWATCH_SHARED/tools/make-bench-pcap), BENCH_ROUNDS (rounds of that tool, default 18),
# DATABASE_URL (its server and role; the database used is netwatch_bench),
# DRAIN_TIMEOUT (seconds, default 900), BENCH_PEERS=0 skips the other tools, BENCH_NETWATCH=0
# skips the pipeline; BENCH_OPS_PORT (19100) moves the stages' ops ports; AGENT_ARGS, ENRICHER_ARGS, DETECTOR_ARGS, SINK_ARGS add flags (tuning).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
shared=${NETWATCH_SHARED:-$root/../shared}
pcap=${BENCH_PCAP:-$root/.cache/bench.pcap}
out=$root/bench/out
NW_LOGDIR=$out/logs
rm -rf "$out"
mkdir -p "$NW_LOGDIR" "$root/.cache"
# shellcheck source=../scripts/lib.sh
. "$root/scripts/lib.sh"

base_url=${DATABASE_URL:-postgres://netwatch:netwatch@127.0.0.1:5432/netwatch?sslmode=disable}
db_url=$(sed -E 's|(://[^/]+/)[^?]+|\1netwatch_bench|' <<<"$base_url")
adm_url=$(sed -E 's|(://[^/]+/)[^?]+|\1postgres|' <<<"$base_url")
nats_port=14222 mon=127.0.0.1:18222 api=127.0.0.1:18080
ops=${BENCH_OPS_PORT:-19100} # the stages' /metrics on ops+1 (agent) .. ops+4 (sink)
nats_url=nats://127.0.0.1:$nats_port

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
pps() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print "-" }'; }

# 1. The capture and its independent counts (cached beside it).
if [ ! -s "$pcap" ]; then
  nw_say "building the benchmark capture $pcap (make-bench-pcap, ${BENCH_ROUNDS:-18} rounds)"
  "$shared/tools/make-bench-pcap" "$pcap.tmp" "${BENCH_ROUNDS:-18}"
  mv "$pcap.tmp" "$pcap"
fi
counts=$root/.cache/$(basename "$pcap").counts
if [ ! -s "$counts" ] || [ "$counts" -ot "$pcap" ]; then
  nw_say "counting frames and IP frames of $pcap (capinfos, tshark)"
  frames=$(capinfos -M -c -T -r "$pcap" | awk -F'\t' '{print $2}')
  ipframes=$(tshark -r "$pcap" -n -Y 'ip or ipv6' -T fields -e frame.number 2>/dev/null | wc -l)
  echo "$frames $ipframes" >"$counts"
fi
read -r frames ipframes <"$counts"
nw_say "capture: $pcap, $frames frames, $ipframes with an IP header ($(du -h "$pcap" | cut -f1))"

stop_order=(agent enricher detector sink api nats nats-alone)
trap 'trap "" INT TERM; nw_stop_all "${stop_order[@]}"; exit 130' INT TERM
trap 'nw_stop_all "${stop_order[@]}"' EXIT

results=()  # "tool|what|seconds|packets/s"
load0=$(cut -d' ' -f1-3 /proc/loadavg)
add() { results+=("$1|$2|$3|$(pps "$frames" "$3")"); }

# 2. netwatch end to end.
netwatch_e2e() {
  local b a nats s t0 t1 agent_end agent_cpu=? deadline last_report e2e nflows nalerts check
  for b in agent sink detector enricher api; do [ -x "bin/$b" ] || { nw_err "bin/$b missing: make build"; return 1; }; done
  for a in 127.0.0.1:$nats_port $mon $api 127.0.0.1:$((ops + 1)) 127.0.0.1:$((ops + 2)) 127.0.0.1:$((ops + 3)) 127.0.0.1:$((ops + 4)); do
    nw_port_busy "$a" && { nw_err "$a is in use (another make bench?)"; return 1; }
  done
  nats=$(nw_nats_server) || { nw_err "no nats-server: scripts/setup.sh"; return 1; }
  sed -E -e "s|^port: .*|port: $nats_port|" -e "s|^http: [^ ]*|http: $mon|" \
    -e "s|store_dir: .*|store_dir: \"$out/nats\"|" -e 's|^server_name: .*|server_name: netwatch-bench|' \
    nats.conf >"$out/nats.conf"
  nw_say "fresh database netwatch_bench"
  psql "$adm_url" -XAtqc 'DROP DATABASE IF EXISTS netwatch_bench WITH (FORCE)' >/dev/null 2>&1 || true
  scripts/pg.sh "$db_url" || return 1

  nw_start nats "$nats" -c "$out/nats.conf"
  nw_wait_ready nats "http://$mon/healthz?js-enabled-only=true" || return 1
  local c=(-nats.url "$nats_url" -log.level warn)
  nw_start sink bin/sink "${c[@]}" -http.addr 127.0.0.1:$((ops + 4)) -database.url "$db_url" ${SINK_ARGS:-}
  nw_wait_ready sink http://127.0.0.1:$((ops + 4))/readyz || return 1
  nw_start detector bin/detector "${c[@]}" -http.addr 127.0.0.1:$((ops + 3)) ${DETECTOR_ARGS:-}
  nw_wait_ready detector http://127.0.0.1:$((ops + 3))/readyz || return 1
  nw_start enricher bin/enricher "${c[@]}" -http.addr 127.0.0.1:$((ops + 2)) ${ENRICHER_ARGS:-}
  nw_wait_ready enricher http://127.0.0.1:$((ops + 2))/readyz || return 1
  nw_start api bin/api "${c[@]}" -http.addr $api -database.url "$db_url"
  nw_wait_ready api "http://$api/readyz" || return 1

  nw_say "netwatch: replaying the capture (agent -pcap, as fast as possible)"
  local pg0; pg0=$(pg_cpu)
  t0=$(now)
  # The wrapper shell records the agent's CPU seconds once it has exited (its children's
  # times, cutime + cstime), which this shell cannot read after bash has reaped it.
  rm -f "$out/agent.cpu"
  nw_start agent bash -c '"$@"; rc=$?; awk -v t="$(getconf CLK_TCK)" '"'"'{ sub(/^.*\) /, ""); split($0, f, " "); printf "%.1f\n", (f[14] + f[15]) / t }'"'"' /proc/$$/stat >"'"$out"'/agent.cpu"; exit $rc' \
    agent bin/agent "${c[@]}" -http.addr 127.0.0.1:$((ops + 1)) -pcap "$pcap" -sensor bench -replay-speed 0 ${AGENT_ARGS:-}
  agent_end=
  deadline=$((SECONDS + ${DRAIN_TIMEOUT:-900}))
  last_report=$SECONDS
  while :; do
    if [ -z "$agent_end" ] && ! nw_alive "${NW_PID[agent]}"; then
      nw_reap agent
      agent_cpu=$(cat "$out/agent.cpu" 2>/dev/null || echo '?')
      agent_end=$(now)
      [ "$NW_RC" = 0 ] || { nw_err "agent exited with status $NW_RC"; nw_tail agent; return 1; }
      nw_say "agent finished reading and publishing in $(secs "$t0" "$agent_end") s"
    fi
    for n in sink detector enricher api nats; do
      nw_alive "${NW_PID[$n]}" || { nw_err "$n died during the benchmark"; nw_tail "$n"; return 1; }
    done
    # Cheap first: nothing pending (the sink acks only stored rows), then the exact sum.
    if [ -n "$agent_end" ] && [ "$(pending)" = 0 ]; then
      s=$(stored)
      if [ "$s" -ge "$ipframes" ]; then t1=$(now); break; fi
    fi
    if [ $SECONDS -ge $deadline ]; then
      nw_err "not drained after ${DRAIN_TIMEOUT:-900}s: $(stored) of $ipframes IP packets stored, pending $(pending)"
      return 1
    fi
    if [ $((SECONDS - last_report)) -ge 10 ]; then
      nw_say "  ... $(stored) of $ipframes IP packets stored, pending: $(pending_by)"
      last_report=$SECONDS
    fi
    sleep 0.25
  done
  e2e=$(secs "$t0" "$t1")
  cpu_line="CPU seconds during the run: agent $agent_cpu"
  for n in enricher detector sink api nats; do cpu_line+=", $n $(cpu_of "${NW_PID[$n]}")"; done
  cpu_line+=", postgres $(awk -v a="$pg0" -v b="$(pg_cpu)" -v t="$tck" 'BEGIN { printf "%.1f", (b - a) / t }') (wall $e2e s, $(nproc) cores)"
  nw_say "$cpu_line"
  s=$(stored)
  nflows=$(psql "$db_url" -XAtqc "select count(*) from flows where sensor = 'bench'")
  nalerts=$(psql "$db_url" -XAtqc "select count(*) from alerts" 2>/dev/null || echo '?')
  check="exact"
  [ "$s" = "$ipframes" ] || check="MISMATCH: stored $s, tshark $ipframes"
  nw_say "netwatch: $ipframes IP packets in $nflows stored flow records ($nalerts alerts) in $e2e s ($check)"
  add "netwatch end to end" "agent → JetStream → enricher → detector + sink → PostgreSQL, until every packet is in a stored flow ($check)" "$e2e"
  add "netwatch agent (same run)" "read, decode, publish to JetStream with acks" "$(secs "$t0" "$agent_end")"
}
# CPU seconds (user + system) of a process, and of every postgres process together.
tck=$(getconf CLK_TCK)
cpu_of() { awk -v t="$tck" '{ sub(/^.*\) /, ""); split($0, f, " "); printf "%.1f", (f[12] + f[13]) / t }' "/proc/$1/stat" 2>/dev/null || echo '?'; }
pg_cpu() {
  local f tot=0
  for f in /proc/[0-9]*/stat; do
    read -r line <"$f" 2>/dev/null || continue
    case $line in *'(postgres)'*) tot=$((tot + $(awk '{ sub(/^.*\) /, ""); split($0, f, " "); print f[12] + f[13] }' <<<"$line"))) ;; esac
  done
  echo "$tot"
}
stored() { psql "$db_url" -XAtqc "select coalesce(sum(orig_pkts + resp_pkts), 0) from flows where sensor = 'bench'" 2>/dev/null || echo 0; }
# per-consumer pending, "enricher=12 detector=0 ...", from the same endpoint
pending_by() { curl -fsS -m 5 "http://$api/api/v1/pipeline" 2>/dev/null | grep -oE '"name":"[a-z-]+","durable":true,"pending":[0-9]+' | sed -E 's/"name":"([a-z-]+)".*"pending":([0-9]+)/\1=\2/' | tr '\n' ' ' || true; }
pending() { curl -fsS -m 5 "http://$api/api/v1/pipeline" 2>/dev/null | grep -oE '"pending"[[:space:]]*:[[:space:]]*[0-9]+' | tail -1 | grep -oE '[0-9]+$' || echo '?'; }

status=0
cpu_line=
if [ "${BENCH_NETWATCH:-1}" != 0 ]; then
  if ! netwatch_e2e; then
    status=1
    results+=("netwatch end to end|FAILED (bench/out/logs)|-|-")
  fi
  nw_stop_all "${stop_order[@]}"
fi

# 3a. The agent alone into a fresh local JetStream (no consumers): the sensor's intake.
agent_alone() {
  local nats t0 t1 ncpu
  nats=$(nw_nats_server) || { nw_err "no nats-server: scripts/setup.sh"; return 1; }
  rm -rf "$out/nats-alone"
  sed -E -e "s|^port: .*|port: $nats_port|" -e "s|^http: [^ ]*|http: $mon|" \
    -e "s|store_dir: .*|store_dir: \"$out/nats-alone\"|" -e 's|^server_name: .*|server_name: netwatch-bench|' \
    nats.conf >"$out/nats-alone.conf"
  nw_start nats-alone "$nats" -c "$out/nats-alone.conf"
  nw_wait_ready nats-alone "http://$mon/healthz?js-enabled-only=true" || return 1
  rm -f "$out/agent-alone.cpu"
  t0=$(now)
  bash -c '"$@"; rc=$?; awk -v t="$(getconf CLK_TCK)" '"'"'{ sub(/^.*\) /, ""); split($0, f, " "); printf "%.2f\n", (f[14] + f[15]) / t }'"'"' /proc/$$/stat >"'"$out"'/agent-alone.cpu"; exit $rc' \
    agent /usr/bin/time -f %M -o "$out/agent-alone.rss" bin/agent -nats.url "$nats_url" -log.level warn -http.addr 127.0.0.1:$((ops + 1)) -pcap "$pcap" -sensor bench \
    -replay-speed 0 ${AGENT_ARGS:-} 2>"$NW_LOGDIR/agent-alone.log" || { nw_err "agent (alone) failed"; return 1; }
  t1=$(now)
  ncpu=$(cpu_of "${NW_PID[nats-alone]}")
  nw_stop_all nats-alone
  local rss; rss=$(awk '{ printf "%.0f", $1 / 1024 }' "$out/agent-alone.rss" 2>/dev/null || echo '?')
  nw_say "agent alone: $(secs "$t0" "$t1") s, agent CPU $(cat "$out/agent-alone.cpu") s, max RSS $rss MiB, nats-server CPU $ncpu s"
  add "netwatch agent → JetStream alone" "read, decode, publish to a local JetStream (file store) with acks, no consumers; agent CPU $(cat "$out/agent-alone.cpu") s, max RSS $rss MiB; nats-server CPU $ncpu s" "$(secs "$t0" "$t1")"
}
if [ "${BENCH_NETWATCH:-1}" != 0 ]; then
  agent_alone || results+=("netwatch agent → JetStream alone|FAILED (bench/out/logs)|-|-")
fi

# 3. The agent's decoder alone.
t0=$(now); bin/agent -summary -pcap "$pcap" >"$out/agent-summary.json" 2>"$NW_LOGDIR/agent-summary.log"; t1=$(now)
add "netwatch agent -summary" "read and decode only, no broker" "$(secs "$t0" "$t1")"

# 4. The peers, on the same file.
if [ "${BENCH_PEERS:-1}" != 0 ]; then
  mkdir -p "$out/nfpcapd"
  t0=$(now); nfpcapd -r "$pcap" -w "$out/nfpcapd" >"$NW_LOGDIR/nfpcapd.log" 2>&1; t1=$(now)
  add "nfpcapd $(nfpcapd -V 2>&1 | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)" "pcap → nfcapd flow files (nfdump)" "$(secs "$t0" "$t1")"
  t0=$(now); argus -X -r "$pcap" -w "$out/bench.argus" >"$NW_LOGDIR/argus.log" 2>&1; t1=$(now)
  add "argus $(argus -h 2>&1 | grep -oE '[0-9]+\.[0-9]+\.[0-9]+(\.[0-9]+)?' | head -1)" "pcap → argus flow records" "$(secs "$t0" "$t1")"
  t0=$(now); tshark -n -r "$pcap" -q -z conv,ip >"$out/tshark-conv.txt" 2>"$NW_LOGDIR/tshark.log"; t1=$(now)
  add "tshark $(tshark -v 2>/dev/null | head -1 | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)" "pcap → IP conversations (-q -z conv,ip)" "$(secs "$t0" "$t1")"
fi

# 5. The table.
{
  echo "Capture: $(basename "$pcap"), $frames frames ($ipframes IP), $(du -h "$pcap" | cut -f1); $(nproc) cores, load average before the run $load0; $(date -u "+%Y-%m-%d %H:%M") UTC"
  echo
  echo "| tool | what it does | seconds | packets/s |"
  echo "|---|---|---:|---:|"
  for r in "${results[@]}"; do IFS='|' read -r a b s p <<<"$r"; echo "| $a | $b | $s | $p |"; done
  [ -n "$cpu_line" ] && { echo; echo "netwatch $cpu_line"; }
} | tee "$out/results.md"
exit $status
