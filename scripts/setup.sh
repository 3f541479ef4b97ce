#!/usr/bin/env bash
# scripts/setup.sh: installs what netwatch needs to build, test, run and benchmark on a
# Debian 12 machine, and only what is missing, so a second run takes about a second.
#
#   Debian packages: libpcap-dev (agent, cgo), tshark tcpdump wireshark-common (tests check
#   against them; editcap/mergecap/capinfos build the bench capture), postgresql (make run,
#   make test), chromium (dashboard browser tests), nfdump argus-server argus-client (make
#   bench peers), curl (readiness probes), time (bench: the agent's max RSS).
#   bin/nats-server: built from the Go module proxy unless a nats-server >= 2.11 is on PATH.
#
# Environment: SKIP_APT=1 skips the Debian packages; WITH_PROTO=1 also installs protoc;
# NATS_SERVER_VERSION (default v2.15.3).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
log() { printf 'setup: %s\n' "$*" >&2; }

pkgs=(libpcap-dev tshark tcpdump wireshark-common postgresql chromium nfdump argus-server
      argus-client curl ca-certificates iproute2 time)
[ "${WITH_PROTO:-0}" = 1 ] && pkgs+=(protobuf-compiler)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

if [ "${SKIP_APT:-0}" != 1 ] && command -v dpkg-query >/dev/null; then
  missing=()
  for p in "${pkgs[@]}"; do installed "$p" || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=()
    if [ "$(id -u)" != 0 ]; then
      command -v sudo >/dev/null || { log "need root (or sudo) to install: ${missing[*]}"; exit 1; }
      sudo=(sudo -n)
    fi
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer no without a prompt.
    echo 'wireshark-common wireshark-common/install-setuid boolean false' | "${sudo[@]}" debconf-set-selections
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
    log "Debian packages installed"
  else
    log "Debian packages present"
  fi
fi

# nats-server >= 2.11 (JetStream features the streams use).
want=${NATS_SERVER_VERSION:-v2.15.3}
nats_ok() { # nats_ok BINARY: true when BINARY reports version >= 2.11
  local v
  v=$("$1" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1) || return 1
  [ -n "$v" ] || return 1
  local maj=${v%%.*} rest=${v#*.}; local min=${rest%%.*}
  [ "$maj" -gt 2 ] || { [ "$maj" -eq 2 ] && [ "$min" -ge 11 ]; }
}
if [ -x "$root/bin/nats-server" ] && nats_ok "$root/bin/nats-server"; then
  log "nats-server present: bin/nats-server ($("$root/bin/nats-server" --version))"
elif command -v nats-server >/dev/null && nats_ok "$(command -v nats-server)"; then
  log "nats-server present: $(command -v nats-server) ($(nats-server --version))"
else
  log "building bin/nats-server $want from the Go module proxy"
  mkdir -p "$root/bin"
  GOBIN="$root/bin" GOWORK=off CGO_ENABLED=0 go install "github.com/nats-io/nats-server/v2@$want"
  log "built bin/nats-server ($("$root/bin/nats-server" --version))"
fi
