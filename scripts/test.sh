#!/usr/bin/env bash
# scripts/test.sh MODULE_DIR...: runs `go test -count=1 ./...` in each module (go test at
# the root does not cross module boundaries), prints how long each took, and fails if any
# failed. GOTESTFLAGS adds flags (e.g. GOTESTFLAGS=-race, or -run). CI=true is passed
# through: there a test that needs PostgreSQL fails instead of skipping.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: scripts/test.sh MODULE_DIR..." >&2; exit 2; }
failed=() summary=()
for m in "$@"; do
  name=${m##*/}
  echo "=== module $name (CI=${CI:-})"
  start=$(date +%s)
  (cd "$m" && go test -count=1 -timeout "${TEST_TIMEOUT:-20m}" ${GOTESTFLAGS:-} ./...)
  rc=$?
  secs=$(( $(date +%s) - start ))
  if [ $rc -eq 0 ]; then summary+=("ok    $name ${secs}s"); else summary+=("FAIL  $name ${secs}s"); failed+=("$name"); fi
done
echo "=== test summary"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAIL: ${failed[*]}" >&2
  exit 1
fi
echo "PASS: every module"
