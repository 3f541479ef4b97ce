package web

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"netwatch/testkit"
)

// TestFormat runs the dashboard's unit test of its number formatting
// (api/web/test/format.test.mjs, node --test): chart axis labels with SI
// prefixes and enough significant digits to tell ticks apart, against
// values written by hand. It needs node and the dashboard's packages
// (esbuild compiles format.ts); without them it skips (fails under CI=true).
func TestFormat(t *testing.T) {
	node := testkit.Tool(t, "node")
	dir := filepath.Join("..", "..", "web")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "esbuild")); err != nil {
		testkit.Unavailable(t, "the dashboard's packages are not installed (cd api/web && npm ci): %v", err)
	}
	cmd := exec.Command(node, "--test", filepath.Join("test", "format.test.mjs"))
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node --test test/format.test.mjs: %v\n%s", err, out)
	}
}
