package summary_test

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"netwatch/agent/internal/decode"
	"netwatch/agent/internal/pipeline"
	"netwatch/agent/internal/summary"
	"netwatch/testkit"
)

// tsharkLines returns tshark's field rows for a display filter.
func tsharkLines(t *testing.T, file, filter string, fields ...string) [][]string {
	t.Helper()
	args := []string{"-r", file, "-Y", filter, "-T", "fields", "-E", "separator=/t"}
	for _, f := range fields {
		args = append(args, "-e", f)
	}
	out, err := exec.Command(testkit.Tool(t, "tshark"), args...).Output()
	if err != nil {
		t.Fatalf("tshark %s: %v", file, err)
	}
	var rows [][]string
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		if l != "" {
			rows = append(rows, strings.Split(l, "\t"))
		}
	}
	return rows
}

// TestARPCounts checks -summary's arp object against counts made from
// tshark's ARP fields: ops, gratuitous (sender IP == target IP), distinct
// (sender IP, sender MAC) bindings without 0.0.0.0, IPs with several MACs;
// network.arp keeps counting every ARP frame.
func TestARPCounts(t *testing.T) {
	for _, name := range []string{"arp-who-has-and-reply.pcap", "linux-sll-arp.pcap", "linux-sll2-icmp-icmpv6-arp.pcap",
		"attack-arp-poisoning-mitm.pcapng", "attack-recon-nmap-arp-sweep-and-version-probe.pcap"} {
		t.Run(name, func(t *testing.T) {
			file := filepath.Join(testkit.Pcaps(t), name)
			rows := tsharkLines(t, file, "arp", "arp.opcode", "arp.src.proto_ipv4", "arp.src.hw_mac", "arp.dst.proto_ipv4")
			var want summary.ARPCount
			macs := map[string]map[string]bool{}
			for _, r := range rows {
				want.Frames++
				switch r[0] {
				case "1":
					want.Requests++
				case "2":
					want.Replies++
				case "3", "4":
					want.RARP++
				}
				if r[1] == r[3] {
					want.Gratuitous++
				}
				if r[1] != "0.0.0.0" {
					if macs[r[1]] == nil {
						macs[r[1]] = map[string]bool{}
					}
					macs[r[1]][r[2]] = true
				}
			}
			for _, m := range macs {
				want.Bindings += uint64(len(m))
				if len(m) > 1 {
					want.IPsWithSeveralMACs++
				}
			}
			r, err := pipeline.Summarize(file, nil)
			if err != nil {
				t.Fatal(err)
			}
			if r.ARP != want {
				t.Errorf("arp %+v, from tshark %+v", r.ARP, want)
			}
			if r.Network["arp"].Packets != uint64(len(rows)) {
				t.Errorf("network.arp %d, tshark %d", r.Network["arp"].Packets, len(rows))
			}
			t.Logf("%+v", r.ARP)
		})
	}
}

// TestClientHelloCounts: every ClientHello tshark shows in the shared
// captures is counted whole (none is split there), over TCP or QUIC.
func TestClientHelloCounts(t *testing.T) {
	for _, c := range []struct {
		name string
		quic bool
	}{{"tls12-clienthello-sni-google-de.pcap", false}, {"attack-tls-heartbleed.pcap", false},
		{"quic-v1-chromium-sni-api-cirrus-ci-com.pcap", true}} {
		file := filepath.Join(testkit.Pcaps(t), c.name)
		n := uint64(len(tsharkLines(t, file, "tls.handshake.type == 1", "frame.number")))
		want := summary.HelloCount{TLS: n}
		if c.quic {
			want = summary.HelloCount{QUIC: n}
		}
		r, err := pipeline.Summarize(file, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.ClientHellos != want || n == 0 {
			t.Errorf("%s: %+v, tshark %d ClientHellos", c.name, r.ClientHellos, n)
		}
	}
}

// TestJSONKeys: the new objects do not rename any existing key.
func TestJSONKeys(t *testing.T) {
	b, err := json.Marshal(summary.New("x"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"packets", "ip_packets", "ip_bytes", "non_ip", "malformed", "link_types", "network",
		"transport", "applications", "tunnels", "undecodable", "duration_s", "arp", "client_hellos"} {
		if _, ok := m[k]; !ok {
			t.Errorf("no key %q in %s", k, b)
		}
	}
	if _, ok := m["network"].(map[string]any)["arp"]; !ok {
		t.Errorf("network.arp missing: %s", b)
	}
	for _, k := range []string{"frames", "requests", "replies", "rarp", "gratuitous", "bindings", "ips_with_several_macs"} {
		if _, ok := m["arp"].(map[string]any)[k]; !ok {
			t.Errorf("arp.%s missing: %s", k, b)
		}
	}
}

// TestARPBindingsCrafted: hand-made ARP summaries with a spoofed IP, a
// repeated binding and an RFC 5227 probe (sender 0.0.0.0).
func TestARPBindingsCrafted(t *testing.T) {
	r := summary.New("crafted")
	add := func(op uint16, ip [4]byte, mac byte, target [4]byte) {
		p := decode.Packet{Kind: decode.KindNonIP, Network: decode.NetARP,
			ARP: decode.ARP{OK: true, Op: op, SenderIP: ip, SenderMAC: [6]byte{2, 0, 0, 0, 0, mac}, TargetIP: target}}
		r.Add(layers.LinkTypeEthernet, 60, &p, nil)
	}
	gw, host := [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}
	add(decode.ARPReply, gw, 1, host)                          // the gateway's real MAC
	add(decode.ARPReply, gw, 1, host)                          // again: same binding
	add(decode.ARPReply, gw, 9, host)                          // the attacker claims the gateway's IP
	add(decode.ARPReply, gw, 8, gw)                            // a second attacker, gratuitous
	add(decode.ARPRequest, host, 2, gw)                        // the host asks
	add(decode.ARPRequest, [4]byte{}, 3, [4]byte{10, 0, 0, 3}) // a probe: no binding
	want := summary.ARPCount{Frames: 6, Requests: 2, Replies: 4, Gratuitous: 1, Bindings: 4, IPsWithSeveralMACs: 1}
	if r.ARP != want {
		t.Errorf("%+v, want %+v", r.ARP, want)
	}
	if r.NonIP != 6 || r.Network["arp"].Packets != 6 {
		t.Errorf("non_ip %d network.arp %d", r.NonIP, r.Network["arp"].Packets)
	}
}

// TestSplitClientHello: a TLS 1.3 ClientHello from Go's crypto/tls
// (larger than one 1448-byte segment with its X25519MLKEM768 key share) in
// two TCP segments counts once as tls_partial (the first segment) and once
// as tls (the second, where it is put together), as tshark, which
// reassembles it, sees one ClientHello in frame 2.
func TestSplitClientHello(t *testing.T) {
	c, s := net.Pipe()
	go func() {
		_ = tls.Client(c, &tls.Config{ServerName: "split.example"}).Handshake()
		c.Close()
	}()
	_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
	rec := make([]byte, 5)
	if _, err := io.ReadFull(s, rec); err != nil {
		t.Fatal(err)
	}
	rec = append(rec, make([]byte, int(rec[3])<<8|int(rec[4]))...)
	if _, err := io.ReadFull(s, rec[5:]); err != nil {
		t.Fatal(err)
	}
	s.Close()
	cut := min(1448, len(rec)-100)
	frame := func(seq uint32, payload []byte) []byte {
		buf := gopacket.NewSerializeBuffer()
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IP{10, 0, 0, 1}, DstIP: net.IP{10, 0, 0, 2}}
		tcp := &layers.TCP{SrcPort: 50000, DstPort: 443, Seq: seq, Ack: 1, ACK: true, PSH: true, Window: 65535}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			eth, ip, tcp, gopacket.Payload(payload)); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	file := filepath.Join(t.TempDir(), "split.pcap")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	w := pcapgo.NewWriter(f)
	_ = w.WriteFileHeader(65535, layers.LinkTypeEthernet)
	for i, fr := range [][]byte{frame(1, rec[:cut]), frame(1+uint32(cut), rec[cut:])} {
		_ = w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(int64(i+1), 0), CaptureLength: len(fr), Length: len(fr)}, fr)
	}
	f.Close()
	if got := tsharkLines(t, file, "tls.handshake.type == 1", "frame.number"); len(got) != 1 || got[0][0] != "2" {
		t.Fatalf("tshark ClientHello frames %v, want [2]", got)
	}
	r, err := pipeline.Summarize(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := (summary.HelloCount{TLS: 1, TLSPartial: 1}); r.ClientHellos != want {
		t.Errorf("%+v, want %+v", r.ClientHellos, want)
	}
}

// TestDNSUndecodableEveryPort: the same malformed messages count the same
// undecodable reasons on DNS (53), mDNS (5353) and LLMNR (5355) ports
// (independent QA, seventh session: mDNS and LLMNR counted none). By hand:
// 5 bytes are short of the 12-byte header (RFC 1035 4.1.1); a header that
// counts one question followed by a label running past the end is a bad
// question; one that counts one answer (no question) followed by 3 bytes
// is a bad answer; a valid query counts nothing.
func TestDNSUndecodableEveryPort(t *testing.T) {
	msgs := [][]byte{
		{0, 1, 2, 3, 4},
		{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9, 'a'},
		{0, 1, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 'a', 0},
		{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'a', 0, 0, 1, 0, 1},
	}
	want := map[string]uint64{decode.ReasonDNSShort: 1, decode.ReasonDNSBadQuestion: 1, decode.ReasonDNSBadRecord: 1}
	for _, port := range []uint16{53, 5353, 5355} {
		r := summary.New("crafted")
		for _, m := range msgs {
			p := decode.Packet{Kind: decode.KindIP, Proto: 17, SrcPort: 40000, DstPort: port, Payload: m,
				PayloadBytes: uint32(len(m)), IPBytes: uint32(28 + len(m))}
			var l decode.L7
			r.Add(layers.LinkTypeEthernet, 42+len(m), &p, &l)
		}
		if len(r.Undecodable) != len(want) {
			t.Errorf("port %d: undecodable %v, want %v", port, r.Undecodable, want)
			continue
		}
		for k, v := range want {
			if r.Undecodable[k] != v {
				t.Errorf("port %d: undecodable %v, want %v", port, r.Undecodable, want)
			}
		}
	}
}
