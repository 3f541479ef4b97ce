package server_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"netwatch/api/internal/server"
	"netwatch/api/internal/web"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// TestBrowserDashboard opens the dashboard in headless chromium (via
// api/web/test/browser.mjs) and checks that flows published to NATS show up
// in the live flows table. It builds the web app when it is not embedded
// and serves the build from disk. Without node or chromium it skips (fails
// under CI=true).
func TestBrowserDashboard(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test in -short mode")
	}
	node := testkit.Tool(t, "node")
	chromium := os.Getenv("CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		testkit.Unavailable(t, "no chromium at %s: %v", chromium, err)
	}
	webDir := filepath.Join(testkit.Root(t), "api", "web")
	dist := filepath.Join(testkit.Root(t), "api", "internal", "web", "dist")
	opts := server.Options{}
	if !web.Built() {
		if _, err := os.Stat(filepath.Join(dist, "index.html")); err != nil {
			cmd := exec.Command(filepath.Join(webDir, "build.sh"))
			cmd.Env = append(os.Environ(), "NETWATCH_WEB_SKIP_INSTALL=1")
			if out, err := cmd.CombinedOutput(); err != nil {
				testkit.Unavailable(t, "build the dashboard: %v\n%s", err, out)
			}
		}
		opts.Web = web.FSHandler(os.DirFS(dist))
	}
	if _, err := os.Stat(filepath.Join(webDir, "node_modules", "playwright-core")); err != nil {
		// build.sh runs npm ci, which installs playwright-core (a dev dependency).
		if out, err := exec.Command(filepath.Join(webDir, "build.sh")).CombinedOutput(); err != nil {
			testkit.Unavailable(t, "install the dashboard's packages: %v\n%s", err, out)
		}
	}
	e := newEnvWith(t, opts)

	flows := []*pb.Flow{testFlow("s1", 1, 6, 443), testFlow("s1", 2, 17, 53), testFlow("s2", 3, 6, 80)}
	var ids []string
	for _, f := range flows {
		ids = append(ids, f.Id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, filepath.Join(webDir, "test", "browser.mjs"))
	cmd.Dir = webDir
	shot := os.Getenv("NETWATCH_SCREENSHOT") // keep a full-page screenshot there
	if shot == "" {
		shot = filepath.Join(t.TempDir(), "dashboard.png")
	}
	cmd.Env = append(os.Environ(), "BASE_URL="+e.url, "EXPECT_IDS="+strings.Join(ids, ","), "CHROMIUM="+chromium,
		"SCREENSHOT="+shot)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// Publish once the page's WebSocket is connected.
	var out []string
	for l := range lines {
		out = append(out, l)
		if l == "connected" {
			testkit.Eventually(t, 10*time.Second, func() bool { return e.srv.Hub.Clients() > 0 }, "page not connected")
			publishFlows(t, e, "s1", flows[0], flows[1])
			publishFlows(t, e, "s2", flows[2])
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("browser test: %v\nstdout:\n%s\nstderr:\n%s", err, strings.Join(out, "\n"), stderr.String())
	}
	t.Logf("browser: %s", strings.Join(out, " | "))
}
