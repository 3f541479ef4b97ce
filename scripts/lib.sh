# scripts/lib.sh: process supervision shared by scripts/run.sh and bench/bench.sh (sourced).
# Each part runs in its own session (setsid), so a Ctrl-C on the terminal reaches only the
# supervising script, which then stops the parts one by one in data-flow order.

# NW_LOGDIR must be set by the caller; parts are remembered in NW_ORDER / NW_PID.
declare -ga NW_ORDER=()
declare -gA NW_PID=() NW_DONE=()
NW_READY_TIMEOUT=${READY_TIMEOUT:-60}   # seconds a part may take to become ready
NW_STOP_TIMEOUT=${STOP_TIMEOUT:-60}     # seconds a part may take to drain and exit

nw_say() { printf '%s netwatch: %s\n' "$(date +%H:%M:%S)" "$*"; }
nw_err() { printf '%s netwatch: error: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# nw_alive PID: the process runs (a zombie, exited but not yet reaped, does not count).
nw_alive() {
  local st
  [ -r "/proc/$1/stat" ] || return 1
  st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# nw_port_busy HOST:PORT: something already listens there.
nw_port_busy() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

# nw_start NAME CMD...: starts a part with stdin from /dev/null and its output in
# $NW_LOGDIR/NAME.log (the previous run's log is kept as NAME.log.1).
nw_start() {
  local name=$1; shift
  local log=$NW_LOGDIR/$name.log
  [ -f "$log" ] && mv -f "$log" "$log.1"
  printf '# %s: %s\n' "$(date -Is)" "$*" >"$log"
  setsid "$@" </dev/null >>"$log" 2>&1 &
  NW_PID[$name]=$!
  NW_ORDER+=("$name")
  nw_say "started $name (pid ${NW_PID[$name]}): $*"
}

# nw_tail NAME: the last lines of a part's log, on stderr.
nw_tail() {
  local log=$NW_LOGDIR/$1.log
  printf -- '--- last lines of %s ---\n' "$log" >&2
  tail -n "${2:-25}" "$log" >&2 || true
  printf -- '---\n' >&2
}

# nw_reap NAME: reaps an exited part; its exit status goes to NW_DONE[NAME] and NW_RC.
# (Not in a command substitution: a subshell cannot wait for this shell's children.)
nw_reap() {
  NW_RC=0
  wait "${NW_PID[$1]}" 2>/dev/null || NW_RC=$?
  NW_DONE[$1]=$NW_RC
}

# nw_wait_ready NAME URL [EXIT_OK]: waits until URL answers 2xx. If the part exits first
# it fails with the part's log, unless EXIT_OK is set and it exited 0 (a finished replay):
# then it returns 3. Times out after NW_READY_TIMEOUT seconds.
nw_wait_ready() {
  local name=$1 url=$2 exit_ok=${3:-} pid=${NW_PID[$1]} deadline=$((SECONDS + NW_READY_TIMEOUT))
  while :; do
    if curl -fsS -m 2 -o /dev/null "$url" 2>/dev/null; then
      nw_say "$name is ready ($url)"
      return 0
    fi
    if ! nw_alive "$pid"; then
      nw_reap "$name"
      if [ -n "$exit_ok" ] && [ "$NW_RC" = 0 ]; then return 3; fi
      nw_err "$name exited with status $NW_RC before it was ready"
      nw_tail "$name"
      return 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      nw_err "$name is not ready after ${NW_READY_TIMEOUT}s ($url: $(curl -sS -m 2 "$url" 2>&1 | head -c 200))"
      nw_tail "$name"
      return 1
    fi
    sleep 0.2
  done
}

# nw_stop NAME: SIGTERM, wait up to NW_STOP_TIMEOUT for it to drain and exit, then SIGKILL.
nw_stop() {
  local name=$1 pid=${NW_PID[$1]:-} deadline
  [ -n "$pid" ] || return 0
  if [ -n "${NW_DONE[$name]+x}" ]; then return 0; fi
  if nw_alive "$pid"; then
    nw_say "stopping $name"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + NW_STOP_TIMEOUT))
    while nw_alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if nw_alive "$pid"; then
      nw_err "$name did not exit within ${NW_STOP_TIMEOUT}s of SIGTERM; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  nw_reap "$name"
  if [ "$NW_RC" = 0 ]; then nw_say "$name stopped"; else nw_say "$name stopped (exit status $NW_RC)"; fi
}

# nw_stop_all NAME...: stops the named parts in the order given, then any other still known.
nw_stop_all() {
  local n
  for n in "$@"; do [ -n "${NW_PID[$n]:-}" ] && nw_stop "$n"; done
  for n in "${NW_ORDER[@]}"; do nw_stop "$n"; done
}

# nw_nats_server: prints the nats-server to use (bin/nats-server, else one >= 2.11 on PATH).
nw_nats_server() {
  if [ -x bin/nats-server ]; then echo "$PWD/bin/nats-server"; return; fi
  if command -v nats-server >/dev/null; then command -v nats-server; return; fi
  return 1
}
