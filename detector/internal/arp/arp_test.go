package arp

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"netwatch/schema/pb"
	"netwatch/testkit"
)

// tsharkARP builds one pb.ArpSummary per ARP frame of a capture from
// tshark's dissection (independent of the agent): opcode, sender and
// target MAC and IPv4 address, VLAN, Ethernet source; gratuitous when
// the sender and target addresses are equal (the schema's definition).
func tsharkARP(t *testing.T, path string) []*pb.ArpSummary {
	t.Helper()
	tshark := testkit.Tool(t, "tshark")
	out, err := exec.Command(tshark, "-r", path, "-n", "-Y", "arp", "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f",
		"-e", "frame.time_epoch", "-e", "arp.opcode", "-e", "arp.src.hw_mac", "-e", "arp.src.proto_ipv4",
		"-e", "arp.dst.hw_mac", "-e", "arp.dst.proto_ipv4", "-e", "vlan.id", "-e", "eth.src").Output()
	if err != nil {
		t.Fatalf("tshark %s: %v", path, err)
	}
	var arps []*pb.ArpSummary
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		c := strings.Split(sc.Text(), "\t")
		if len(c) < 8 {
			t.Fatalf("tshark line %q", sc.Text())
		}
		ts, _ := strconv.ParseFloat(c[0], 64)
		op, _ := strconv.Atoi(c[1])
		vlan, _ := strconv.Atoi(c[6])
		smac, err1 := net.ParseMAC(c[2])
		tmac, err2 := net.ParseMAC(c[4])
		sip, err3 := netip.ParseAddr(c[3])
		tip, err4 := netip.ParseAddr(c[5])
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
			t.Fatalf("tshark line %q", sc.Text())
		}
		a := &pb.ArpSummary{TsNs: int64(ts * 1e9), Op: uint32(op), SenderMac: smac, SenderIp: sip.AsSlice(),
			TargetMac: tmac, TargetIp: tip.AsSlice(), Vlan: uint32(vlan), Gratuitous: sip == tip}
		if e, err := net.ParseMAC(c[7]); err == nil {
			a.EthSrc = e
		}
		arps = append(arps, a)
	}
	return arps
}

// TestCaptures: the ARP poisoning capture (pcap-labels.csv: MAC
// 00:25:b3:bf:91:ee claims 172.16.0.1, the gateway, to victim
// 172.16.0.107) raises arp_spoof naming that MAC and address; the benign
// ARP captures and the nmap ARP sweeps (hundreds of who-has from one host)
// raise nothing.
func TestCaptures(t *testing.T) {
	pcaps := testkit.Pcaps(t)
	for _, c := range []struct {
		file    string
		min     int // ARP frames tshark finds
		spoof   bool
		sweeper string // the labelled ARP sweeper (pcap-labels.csv, lab/labels.csv): one hostsweep alert naming it
	}{
		{"attack-arp-poisoning-mitm.pcapng", 4, true, ""},
		{"arp-who-has-and-reply.pcap", 2, false, ""},
		{"linux-sll-arp.pcap", 12, false, ""},
		{"linux-sll2-icmp-icmpv6-arp.pcap", 2, false, ""},
		{"attack-recon-nmap-arp-sweep-and-version-probe.pcap", 500, false, "192.168.1.71"},
		{"lab/lab-nmap-host-sweep.pcap", 500, false, "10.99.1.10"},
		{"attack-http-sqli-dvwa-nsec.pcapng", 16, false, ""},
		{"lab/lab-benign-mixed.pcap", 1, false, ""},
	} {
		t.Run(c.file, func(t *testing.T) {
			arps := tsharkARP(t, filepath.Join(pcaps, c.file))
			if len(arps) < c.min {
				t.Fatalf("tshark found %d ARP frames, want at least %d", len(arps), c.min)
			}
			e := New(DefaultConfig())
			var alerts []*pb.Alert
			for _, a := range arps {
				alerts = append(alerts, e.Observe("cap", a)...)
			}
			for _, a := range alerts {
				t.Logf("%s orig=%q resp=%s: %s %s", a.Category, a.OrigAddr, a.RespAddr, a.Summary, a.Evidence)
			}
			_ = json.Marshal
			if c.sweeper != "" {
				sweeps := 0
				for _, a := range alerts {
					if a.Category != "hostsweep" || a.OrigAddr != c.sweeper || a.Technique != "T1018" {
						t.Errorf("alert %s %q: want only hostsweep alerts naming %s", a.Category, a.OrigAddr, c.sweeper)
					}
					sweeps++
				}
				if sweeps == 0 {
					t.Errorf("no hostsweep alert naming %s", c.sweeper)
				}
				return
			}
			if !c.spoof {
				if len(alerts) != 0 {
					t.Fatalf("%d alerts on %d benign ARP frames", len(alerts), len(arps))
				}
				return
			}
			found := false
			for _, a := range alerts {
				var ev struct {
					MAC string `json:"mac"`
					IP  string `json:"claimed_ip"`
				}
				if err := json.Unmarshal(a.Evidence, &ev); err != nil {
					t.Fatal(err)
				}
				if ev.MAC != "00:25:b3:bf:91:ee" {
					t.Errorf("alert names MAC %s, not the attacker", ev.MAC)
				}
				if a.Category == "arp_spoof" && a.Technique == "T1557.002" && ev.IP == "172.16.0.1" && a.RespAddr == "172.16.0.1" {
					found = true
					// The attacker's own address, from its first who-has.
					if a.OrigAddr != "172.16.0.105" {
						t.Errorf("orig_addr %q, want 172.16.0.105", a.OrigAddr)
					}
				}
			}
			if !found {
				t.Errorf("no arp_spoof alert for 00:25:b3:bf:91:ee claiming 172.16.0.1 among %d alerts", len(alerts))
			}
		})
	}
}

func arpFrame(op uint32, smac string, sip string, tip string, at int64) *pb.ArpSummary {
	m, _ := net.ParseMAC(smac)
	s, t := netip.MustParseAddr(sip), netip.MustParseAddr(tip)
	return &pb.ArpSummary{TsNs: at, Op: op, SenderMac: m, SenderIp: s.AsSlice(), TargetMac: make([]byte, 6),
		TargetIp: t.AsSlice(), Gratuitous: s == t, EthSrc: m}
}

func TestRules(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC).UnixNano()
	s := int64(time.Second)
	gw, attacker, host := "02:00:00:00:00:01", "02:00:00:00:00:66", "02:00:00:00:00:20"
	for _, c := range []struct {
		name    string
		frames  []*pb.ArpSummary
		trigger string // "" for none
	}{
		{"gateway answers, then another MAC claims its address", []*pb.ArpSummary{
			arpFrame(1, host, "10.0.0.20", "10.0.0.1", t0),
			arpFrame(2, gw, "10.0.0.1", "10.0.0.20", t0+s/100),
			arpFrame(2, attacker, "10.0.0.1", "10.0.0.20", t0+5*s),
		}, "claim_conflict"},
		{"a MAC asks for the gateway, then claims it", []*pb.ArpSummary{
			arpFrame(1, attacker, "10.0.0.66", "10.0.0.1", t0),
			arpFrame(2, attacker, "10.0.0.1", "10.0.0.20", t0+s),
		}, "asked_then_claimed"},
		{"a MAC claims the gateway, then asks for it (the capture's order)", []*pb.ArpSummary{
			arpFrame(1, attacker, "10.0.0.1", "10.0.0.20", t0),
			arpFrame(1, attacker, "10.0.0.66", "10.0.0.1", t0+10*s),
		}, "claimed_then_asked"},
		{"the same claim after the binding expired (-arp.binding-ttl)", []*pb.ArpSummary{
			arpFrame(2, gw, "10.0.0.1", "10.0.0.20", t0),
			arpFrame(2, attacker, "10.0.0.1", "10.0.0.20", t0+5*3600*s),
		}, ""},
		{"20 gratuitous announcements from one MAC in a minute", func() []*pb.ArpSummary {
			var fs []*pb.ArpSummary
			for i := 0; i < 20; i++ {
				fs = append(fs, arpFrame(2, attacker, "10.0.0.66", "10.0.0.66", t0+int64(i)*2*s))
			}
			return fs
		}(), "reply_flood"},
		{"19 gratuitous announcements", func() []*pb.ArpSummary {
			var fs []*pb.ArpSummary
			for i := 0; i < 19; i++ {
				fs = append(fs, arpFrame(2, attacker, "10.0.0.66", "10.0.0.66", t0+int64(i)*2*s))
			}
			return fs
		}(), ""},
		{"30 answered questions", func() []*pb.ArpSummary {
			var fs []*pb.ArpSummary
			for i := 0; i < 30; i++ {
				fs = append(fs, arpFrame(1, host, "10.0.0.20", "10.0.0.1", t0+int64(i)*s),
					arpFrame(2, gw, "10.0.0.1", "10.0.0.20", t0+int64(i)*s+s/1000))
			}
			return fs
		}(), ""},
		{"a host asks for 32 addresses in a minute (sweep)", func() []*pb.ArpSummary {
			var fs []*pb.ArpSummary
			for i := 1; i <= 32; i++ {
				fs = append(fs, arpFrame(1, attacker, "10.0.0.66", fmt.Sprintf("10.0.0.%d", 100+i), t0+int64(i)*s/10))
			}
			return fs
		}(), "sweep"},
		{"a host asks for 31 addresses", func() []*pb.ArpSummary {
			var fs []*pb.ArpSummary
			for i := 1; i <= 31; i++ {
				fs = append(fs, arpFrame(1, attacker, "10.0.0.66", fmt.Sprintf("10.0.0.%d", 100+i), t0+int64(i)*s/10))
			}
			return fs
		}(), ""},
		{"RFC 5227 probe then announcement", []*pb.ArpSummary{
			arpFrame(1, host, "0.0.0.0", "10.0.0.20", t0),
			arpFrame(1, host, "10.0.0.20", "10.0.0.20", t0+s),
		}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := New(DefaultConfig())
			var alerts []*pb.Alert
			for _, f := range c.frames {
				alerts = append(alerts, e.Observe("s1", f)...)
			}
			if c.trigger == "" {
				if len(alerts) != 0 {
					t.Fatalf("alert: %s", alerts[0].Summary)
				}
				return
			}
			if len(alerts) != 1 {
				t.Fatalf("%d alerts, want 1", len(alerts))
			}
			a := alerts[0]
			if c.trigger == "sweep" {
				if a.Category != "hostsweep" || a.Rule != RuleSweep || a.OrigAddr != "10.0.0.66" || !strings.Contains(string(a.Evidence), `"distinct_hosts":32`) {
					t.Errorf("sweep alert %v", a)
				}
			} else if !strings.Contains(string(a.Evidence), `"trigger":"`+c.trigger+`"`) || !strings.Contains(string(a.Evidence), attacker) {
				t.Errorf("evidence %s", a.Evidence)
			}
			// Replay on a fresh engine: the same id; redelivery: no second alert;
			// retract: fires again.
			e2 := New(DefaultConfig())
			var again []*pb.Alert
			for _, f := range c.frames {
				again = append(again, e2.Observe("s1", f)...)
			}
			if len(again) != 1 || again[0].Id != a.Id {
				t.Errorf("replay: %v", again)
			}
			last := c.frames[len(c.frames)-1]
			if n := len(e2.Observe("s1", last)); n != 0 {
				t.Errorf("redelivery: %d alerts", n)
			}
			e2.Retract(a)
			if x := e2.Observe("s1", last); len(x) != 1 || x[0] != a {
				t.Errorf("after retract: %v", x)
			}
		})
	}
}

func TestExtract(t *testing.T) {
	arps := []*pb.ArpSummary{arpFrame(1, "02:00:00:00:00:20", "10.0.0.20", "10.0.0.1", 1), arpFrame(2, "02:00:00:00:00:01", "10.0.0.1", "10.0.0.20", 2)}
	b := &pb.PacketBatch{Sensor: "s1", Boot: "b", Seq: 7, Bucket: 3, SentNs: 9, Arp: arps,
		Packets: []*pb.PacketSummary{{TsNs: 1, SrcAddr: []byte{1, 2, 3, 4}, DstAddr: []byte{5, 6, 7, 8}, Proto: 6, DnsQuery: "x"}, {TsNs: 2}}}
	data, err := proto.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	sensor, got, err := Extract(data)
	if err != nil || sensor != "s1" || len(got) != 2 || !proto.Equal(got[0], arps[0]) || !proto.Equal(got[1], arps[1]) {
		t.Fatalf("Extract = %q %v %v", sensor, got, err)
	}
	b.Arp = nil
	data, _ = proto.Marshal(b)
	if _, got, err := Extract(data); err != nil || len(got) != 0 {
		t.Errorf("no ARP: %v %v", got, err)
	}
	// Every truncation of a batch is an error or a prefix, never a panic.
	b.Arp = arps
	data, _ = proto.Marshal(b)
	for i := range data {
		_, _, _ = Extract(data[:i])
	}
	if _, _, err := Extract([]byte{0x42, 0xff}); err == nil {
		t.Error("garbage: no error")
	}
}

// FuzzExtract: no input panics.
func FuzzExtract(f *testing.F) {
	b, _ := proto.Marshal(&pb.PacketBatch{Sensor: "s", Arp: []*pb.ArpSummary{{Op: 1, SenderIp: []byte{1, 2, 3, 4}}}})
	f.Add(b)            // a batch with one ARP summary
	f.Add([]byte{})     // empty
	f.Add([]byte{0x42}) // field 8, no length
	f.Fuzz(func(t *testing.T, data []byte) {
		_, arps, err := Extract(data)
		if err == nil {
			e := New(DefaultConfig())
			for _, a := range arps {
				e.Observe("s", a)
			}
		}
	})
}
