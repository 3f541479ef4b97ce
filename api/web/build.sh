#!/bin/sh
# Builds the dashboard (React + TypeScript + ECharts, Vite) into
# api/internal/web/dist, which `go build ./cmd/api` embeds. The build is
# committed, so `go build` needs no Node; rebuild it after changing api/web
# (`make web`) and commit dist: TestBundleFresh fails when dist/.source-sha256
# is not the hash of the sources (hash.mjs).
# Set NETWATCH_WEB_SKIP_INSTALL=1 to reuse an existing node_modules.
#
# Vite writes into a fresh directory that then replaces dist by rename, so a
# concurrent `go build` never sees dist empty (go:embed needs its .gitkeep).
set -eu
cd "$(dirname "$0")"
if [ "${NETWATCH_WEB_SKIP_INSTALL:-}" != 1 ] || [ ! -d node_modules ]; then
	npm ci --no-audit --no-fund --loglevel=error
fi
webdir=../internal/web
tmp=$(mktemp -d "$webdir/.dist-XXXXXX")
trap 'rm -rf "$tmp" "$tmp.old"' EXIT
npx --no-install tsc --noEmit -p .
npx --no-install vite build --logLevel warn --outDir "$tmp" --emptyOutDir
touch "$tmp/.gitkeep"
node hash.mjs > "$tmp/.source-sha256"
chmod 755 "$tmp"
if [ -d "$webdir/dist" ]; then mv "$webdir/dist" "$tmp.old"; fi
mv "$tmp" "$webdir/dist"
echo "dashboard built into api/internal/web/dist"
