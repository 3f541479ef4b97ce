#!/bin/sh
# Builds the dashboard (React + ECharts, Vite) into api/internal/web/dist,
# which `go build ./cmd/api` embeds. Run before building the api binary;
# without it the api serves a "dashboard not built" page at /.
# Set NETWATCH_WEB_SKIP_INSTALL=1 to reuse an existing node_modules.
set -eu
cd "$(dirname "$0")"
if [ "${NETWATCH_WEB_SKIP_INSTALL:-}" != 1 ] || [ ! -d node_modules ]; then
	npm ci --no-audit --no-fund --loglevel=error
fi
npx --no-install vite build --logLevel warn
# Keep the placeholder that lets `go build` embed dist without a build.
touch ../internal/web/dist/.gitkeep
echo "dashboard built into api/internal/web/dist"
