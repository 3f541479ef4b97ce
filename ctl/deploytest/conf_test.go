package deploytest

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"netwatch/ctl/internal/auth"
	"netwatch/ctl/internal/perms"
	"netwatch/schema"
	"netwatch/schema/ops"
	"netwatch/testkit"
)

// install copies deploy/ to a temporary /etc/netwatch (deploy/README.md:
// "install this folder as /etc/netwatch/"), points every absolute
// /etc/netwatch/ path of the .conf files there, and issues the certificates
// the configurations name from a throwaway CA. It returns the copy's root.
func install(t *testing.T) (etc string, authority *ca) {
	t.Helper()
	root := testkit.Root(t)
	etc = filepath.Join(t.TempDir(), "etc", "netwatch")
	src := filepath.Join(root, "deploy")
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.HasSuffix(p, ".conf") {
			data = []byte(strings.ReplaceAll(string(data), "/etc/netwatch/", etc+"/"))
		}
		write(t, filepath.Join(etc, rel), data)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	authority = newCA(t, "netwatch test CA")
	write(t, filepath.Join(etc, "tls", "ca.pem"), authority.pem)
	for _, n := range []string{"nw-n1", "nw-n2", "nw-n3", "nw-site-a"} {
		authority.issue(t, filepath.Join(etc, "tls"), n)
	}
	return etc, authority
}

// natsServerBin is bin/nats-server (scripts/setup.sh builds it).
func natsServerBin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(testkit.Root(t), "bin", "nats-server")
	if _, err := os.Stat(bin); err != nil {
		testkit.Unavailable(t, "no %s (make setup builds it): %v", bin, err)
	}
	return bin
}

// TestEveryConfPassesNatsServerCheck runs nats-server -t on every NATS
// configuration of the repository: nats.conf, deploy/cluster/n1-3.conf and
// leaf/site.conf (with TLS files from a throwaway CA), the compose nodes and
// the Kubernetes ConfigMap's nats.conf (with a resolver.conf from
// netwatchctl init). A configuration error makes nats-server exit non-zero.
func TestEveryConfPassesNatsServerCheck(t *testing.T) {
	bin := natsServerBin(t)
	etc, _ := install(t)
	if _, err := auth.Init(filepath.Join(etc, "compose", "nats"), "netwatch"); err != nil {
		t.Fatal(err)
	}
	// The pod's /etc/netwatch/nats (ConfigMap) and /etc/netwatch/resolver (Secret).
	k8sDir := filepath.Join(etc, "k8s", "pod")
	if _, err := auth.Init(filepath.Join(k8sDir, "resolver"), "netwatch"); err != nil {
		t.Fatal(err)
	}
	cm := configMap(t, loadK8s(t), "nats-config")["nats.conf"]
	if cm == "" {
		t.Fatal("ConfigMap nats-config has no nats.conf")
	}
	write(t, filepath.Join(k8sDir, "nats", "nats.conf"), []byte(cm))

	confs := []string{filepath.Join(testkit.Root(t), "nats.conf")}
	filepath.WalkDir(etc, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".conf") && filepath.Base(p) != "accounts.conf" && filepath.Base(p) != auth.ResolverFile {
			confs = append(confs, p)
		}
		return nil
	})
	want := []string{"nats.conf", "n1.conf", "n2.conf", "n3.conf", "site.conf", "nats-1.conf", "nats-2.conf", "nats-3.conf"}
	for _, w := range want {
		found := false
		for _, c := range confs {
			found = found || filepath.Base(c) == w
		}
		if !found {
			t.Errorf("no %s among %v", w, confs)
		}
	}
	for _, c := range confs {
		cmd := exec.Command(bin, "-c", c, "-t")
		cmd.Env = append(os.Environ(), "POD_NAME=nats-0")
		out, err := cmd.CombinedOutput()
		rel, _ := filepath.Rel(etc, c)
		if err != nil {
			t.Errorf("nats-server -c %s -t: %v\n%s", rel, err, out)
		} else if !strings.Contains(string(out), "is valid") {
			t.Errorf("nats-server -c %s -t said %s", rel, out)
		}
	}
	t.Logf("%d configurations valid", len(confs))
}

// TestAccountsConfIsGenerated keeps deploy/accounts.conf equal to
// netwatchctl accounts-conf -sensors sensor-a,sensor-b, so the static users
// have exactly the permissions of the JWT credentials (one table,
// ctl/internal/perms).
func TestAccountsConfIsGenerated(t *testing.T) {
	got, err := os.ReadFile(filepath.Join(testkit.Root(t), "deploy", "accounts.conf"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := perms.AccountsConf([]string{"sensor-a", "sensor-b"})
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Error("deploy/accounts.conf differs from netwatchctl accounts-conf -sensors sensor-a,sensor-b: regenerate it (cd ctl && go run ./cmd/netwatchctl accounts-conf -sensors sensor-a,sensor-b -o ../deploy/accounts.conf)")
	}
}

// TestTLSAndStaticUsers starts a server with deploy's accounts.conf and the
// client tls block of cluster/n1.conf (certificates from a throwaway CA) and
// its HTTPS monitoring port, then checks: a sensor over TLS trusting the CA
// publishes its own packets; a plain-text client, a client trusting another
// CA and a wrong password are refused; the sensor cannot publish as
// sensor-b; the enricher user cannot publish packets; /healthz answers over
// HTTPS.
func TestTLSAndStaticUsers(t *testing.T) {
	etc, authority := install(t)
	cert, key := authority.issue(t, filepath.Join(etc, "tls"), "localhost")
	conf := fmt.Sprintf(`
server_name: tls-test
listen: 127.0.0.1:-1
https: 127.0.0.1:-1
max_payload: 8MB
include accounts.conf
tls { cert_file: %q, key_file: %q, ca_file: %q, timeout: 5 }
jetstream { store_dir: %q }
`, cert, key, filepath.Join(etc, "tls", "ca.pem"), filepath.Join(t.TempDir(), "js"))
	path := filepath.Join(etc, "tls-test.conf")
	write(t, path, []byte(conf))
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatal(err)
	}
	opts.NoLog, opts.NoSigs = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	t.Cleanup(s.Shutdown)
	url := "tls://" + s.Addr().String()
	caFile := filepath.Join(etc, "tls", "ca.pem")

	// Provision as admin (static user) so that the sensor has streams to publish to.
	admin, err := nats.Connect(url, nats.RootCAs(caFile), nats.UserInfo("admin", "change-me-admin"))
	if err != nil {
		t.Fatalf("admin over TLS: %v", err)
	}
	defer admin.Close()
	ajs, _ := jetstream.New(admin)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := schema.Provision(ctx, ajs, schema.StreamOptions{}); err != nil {
		t.Fatalf("provision as admin: %v", err)
	}

	// The services' own connect path (schema/ops, -nats.tls-ca) trusts the
	// private CA only when told to.
	hostport := strings.TrimPrefix(url, "tls://")
	oc := ops.Common{NATSURL: "tls://admin:change-me-admin@" + hostport, NATSCA: caFile, LogLevel: "info", LogFormat: "json"}
	if err := oc.Validate(); err != nil {
		t.Fatalf("ops config: %v", err)
	}
	octx, ocancel := context.WithTimeout(ctx, 10*time.Second)
	onc, err := oc.ConnectNATS(octx, "deploytest", slog.New(slog.DiscardHandler))
	ocancel()
	if err != nil {
		t.Fatalf("ops.ConnectNATS with -nats.tls-ca: %v", err)
	}
	onc.Close()
	oc.NATSCA = ""
	octx, ocancel = context.WithTimeout(ctx, 3*time.Second)
	if onc, err := oc.ConnectNATS(octx, "deploytest", slog.New(slog.DiscardHandler)); err == nil {
		onc.Close()
		t.Error("ops.ConnectNATS trusted the private CA without -nats.tls-ca")
	}
	ocancel()

	errs := make(chan error, 16)
	sensor, err := nats.Connect(url, nats.RootCAs(caFile), nats.UserInfo("sensor-a", "change-me-sensor-a"),
		nats.CustomInboxPrefix(perms.SensorInbox("sensor-a")),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		t.Fatalf("sensor-a over TLS: %v", err)
	}
	defer sensor.Close()
	sjs, _ := jetstream.New(sensor)
	if _, err := sjs.Publish(ctx, schema.PacketsSubject("sensor-a", 1), []byte("x"), jetstream.WithMsgID("a-1")); err != nil {
		t.Fatalf("sensor-a publishing its own packets over TLS: %v", err)
	}
	c2, cf := context.WithTimeout(ctx, 2*time.Second)
	_, err = sjs.Publish(c2, schema.PacketsSubject("sensor-b", 1), []byte("x"), jetstream.WithMsgID("b-1"))
	cf()
	if err == nil {
		t.Error("sensor-a published as sensor-b")
	}
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), `Permissions Violation for Publish to "netwatch.packets.sensor-b.1"`) {
			t.Errorf("sensor-a as sensor-b: %v", err)
		} else {
			t.Logf("sensor-a as sensor-b: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("no permissions violation for sensor-a publishing as sensor-b")
	}

	enr, err := nats.Connect(url, nats.RootCAs(caFile), nats.UserInfo("enricher", "change-me-enricher"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		t.Fatalf("enricher over TLS: %v", err)
	}
	defer enr.Close()
	enr.Publish(schema.PacketsSubject("sensor-a", 1), []byte("forged"))
	enr.Flush()
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), "Permissions Violation for Publish") {
			t.Errorf("enricher publishing packets: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("no permissions violation for the enricher publishing packets")
	}

	refused := map[string][]nats.Option{
		"another CA":     {nats.RootCAs(writeOtherCA(t)), nats.UserInfo("sensor-a", "change-me-sensor-a")},
		"wrong password": {nats.RootCAs(caFile), nats.UserInfo("sensor-a", "guess")},
	}
	for what, o := range refused {
		nc, err := nats.Connect(url, append(o, nats.NoReconnect(), nats.Timeout(3*time.Second))...)
		if err == nil {
			nc.Close()
			t.Errorf("%s: connected", what)
			continue
		}
		t.Logf("%s: refused: %v", what, err)
		var ue x509.UnknownAuthorityError
		if what == "another CA" && !errors.As(err, &ue) && !strings.Contains(err.Error(), "certificate") {
			t.Errorf("another CA: %v, want a certificate error", err)
		}
	}

	// Plain text: nats.go would upgrade to TLS by itself, so speak the
	// protocol on a raw TCP connection; the server demands TLS.
	raw, err := net.DialTimeout("tcp", s.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(raw)
	if info, _ := br.ReadString('\n'); !strings.Contains(info, `"tls_required":true`) {
		t.Errorf("INFO without tls_required: %s", info)
	}
	fmt.Fprintf(raw, "CONNECT {\"user\":\"sensor-a\",\"pass\":\"change-me-sensor-a\",\"verbose\":false}\r\nPUB netwatch.packets.sensor-a.1 1\r\nx\r\nPING\r\n")
	reply, _ := br.ReadString('\n')
	raw.Close()
	if strings.HasPrefix(reply, "PONG") || strings.HasPrefix(reply, "+OK") {
		t.Errorf("plain-text client accepted: %q", reply)
	}
	t.Logf("plain text: server answered %q", strings.TrimSpace(reply))
	// Only sensor-a's one TLS publish is stored: nothing forged, nothing in plain text.
	st, err := ajs.Stream(ctx, schema.StreamPackets)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; n != 1 {
		t.Errorf("PACKETS holds %d messages, want 1", n)
	}

	// Monitoring over HTTPS.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(authority.pem)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Get(fmt.Sprintf("https://127.0.0.1:%d/healthz", s.MonitorAddr().Port))
	if err != nil {
		t.Fatalf("https monitoring: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "ok") {
		t.Errorf("/healthz: %d %s", resp.StatusCode, body)
	}
}

func writeOtherCA(t *testing.T) string {
	other := newCA(t, "someone else")
	p := filepath.Join(t.TempDir(), "other-ca.pem")
	write(t, p, other.pem)
	return p
}
