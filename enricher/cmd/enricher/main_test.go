package main

import (
	"bytes"
	"flag"
	"strings"
	"testing"
	"time"

	"netwatch/schema/ops"
)

func parse(t *testing.T, args []string, env map[string]string) (*Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("enricher", flag.ContinueOnError)
	var cfg Config
	cfg.register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := ops.ApplyEnv(fs, func(k string) string { return env[k] }); err != nil {
		return nil, err
	}
	return &cfg, cfg.Validate()
}

func TestConfigPrecedence(t *testing.T) {
	cfg, err := parse(t, []string{"-flow.idle-timeout.udp=30s"}, map[string]string{
		"NETWATCH_FLOW_IDLE_TIMEOUT_UDP": "45s", "NETWATCH_FLOW_ACTIVE_TIMEOUT": "2m", "NETWATCH_LOCAL_NETS": "192.0.2.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	f := cfg.Stage.Flow
	if f.IdleUDP != 30*time.Second || f.Active != 2*time.Minute || f.IdleTCP != 5*time.Minute || len(f.LocalNets) != 1 {
		t.Errorf("config %+v", f)
	}
	if cfg.HTTPAddr != "127.0.0.1:9102" {
		t.Errorf("http addr %s", cfg.HTTPAddr)
	}
}

func TestConfigInvalid(t *testing.T) {
	if _, err := parse(t, []string{"-local-nets=10.0.0.0/33", "-community-id.seed=70000"}, nil); err == nil ||
		!strings.Contains(err.Error(), "local-nets") || !strings.Contains(err.Error(), "seed") {
		t.Errorf("err %v", err)
	}
}

func TestCheckConfig(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-check-config"}, func(string) string { return "" }, &out); err != nil || !strings.Contains(out.String(), "ok") {
		t.Errorf("err %v out %q", err, out.String())
	}
}

var geoDir = "../../../../shared/data/geoip/"

// TestGeoIPConfig: a broken database is an error at start (and with
// -check-config), named by its flag; the environment sets the files too.
func TestGeoIPConfig(t *testing.T) {
	var out bytes.Buffer
	broken := geoDir + "GeoIP2-City-Test-Broken-Double-Format.mmdb"
	err := run([]string{"-check-config", "-geoip.city", broken}, func(string) string { return "" }, &out)
	if err == nil || !strings.Contains(err.Error(), "-geoip.city") || !strings.Contains(err.Error(), "Broken-Double-Format") {
		t.Errorf("broken -geoip.city: err %v", err)
	}
	err = run([]string{"-check-config"}, func(k string) string {
		return map[string]string{"NETWATCH_GEOIP_ASN": broken}[k]
	}, &out)
	if err == nil || !strings.Contains(err.Error(), "-geoip.asn") {
		t.Errorf("broken NETWATCH_GEOIP_ASN: err %v", err)
	}
	cfg, err := parse(t, nil, map[string]string{"NETWATCH_GEOIP_CITY": geoDir + "GeoIP2-City-Test.mmdb",
		"NETWATCH_GEOIP_ASN": geoDir + "GeoLite2-ASN-Test.mmdb", "NETWATCH_FLOW_MAX_FLOWS": "1000"})
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.geo.Close()
	if cfg.Stage.Flow.Geo == nil || cfg.Stage.MaxFlows != 1000 {
		t.Errorf("geo %v max flows %d", cfg.Stage.Flow.Geo, cfg.Stage.MaxFlows)
	}
	if cfg, err := parse(t, []string{"-flow.max-flows=-1", "-counters.top=0", "-instance="}, nil); err == nil ||
		!strings.Contains(err.Error(), "max-flows") || !strings.Contains(err.Error(), "counters.top") || !strings.Contains(err.Error(), "-instance") {
		t.Errorf("cfg %v err %v", cfg, err)
	}
}

func TestGroupConfig(t *testing.T) {
	cfg, err := parse(t, []string{"-consume.group=enricher", "-instance=host-a"}, map[string]string{"NETWATCH_CONSUME_PARTITIONS": "32"})
	if err != nil {
		t.Fatal(err)
	}
	if g := cfg.Stage.Group; g.Name != "enricher" || g.Member != "host-a" || g.Partitions != 32 || g.AckWait != time.Minute || !g.Join {
		t.Errorf("group %+v", g)
	}
	if _, err := parse(t, []string{"-consume.group=enricher", "-consume.ack-wait=10s", "-consume.member=a.b"}, nil); err == nil ||
		!strings.Contains(err.Error(), "-consume.ack-wait") || !strings.Contains(err.Error(), "-consume.member") {
		t.Errorf("err %v", err)
	}
}
