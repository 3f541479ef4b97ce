package e2e

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"netwatch/testkit"
)

func tup(src string, sp uint16, dst string, dp uint16, proto uint8) Tuple {
	return Tuple{Src: netip.MustParseAddr(src), SPort: sp, Dst: netip.MustParseAddr(dst), DPort: dp, Proto: proto}
}

// TestTsharkHandCounts checks the tshark side against counts read by hand
// from MANIFEST.md and `tshark -V` of small captures.
func TestTsharkHandCounts(t *testing.T) {
	ts := testkit.Tool(t, "tshark")
	dir := testkit.Pcaps(t)
	tests := []struct {
		file  string
		want  map[Tuple]Count
		nonIP int
	}{
		// MANIFEST: five echo request/reply pairs; 84-byte IPv4 datagrams.
		{"eth-ipv4-icmp-echo-5-pings.pcap", map[Tuple]Count{
			tup("172.16.133.2", 0, "172.217.11.78", 0, 1): {5, 5 * 84},
			tup("172.217.11.78", 0, "172.16.133.2", 0, 1): {5, 5 * 84},
		}, 0},
		// 4in4: one packet, counted in the inner UDP header (32 bytes).
		{"tunnel-4in4-ipip-udp.pcap", map[Tuple]Count{
			tup("10.0.0.1", 30000, "10.0.0.2", 13000, 17): {1, 32},
		}, 0},
		// 6in4: 10 ping6 packets, inner IPv6 payload length 60 (+40).
		{"tunnel-6in4-ping6.pcap", map[Tuple]Count{
			tup("2001:db8:0:1::1", 0, "2001:db8:0:1::2", 0, 58): {5, 500},
			tup("2001:db8:0:1::2", 0, "2001:db8:0:1::1", 0, 58): {5, 500},
		}, 0},
		// 5 fragments of 1500 bytes, the first carries TCP 1265 > 21.
		{"ipv4-fragments-tcp-5-frags.pcap", map[Tuple]Count{
			tup("210.54.213.247", 1265, "131.243.1.10", 21, 6): {5, 7500},
		}, 0},
		// Total length 0 (as TSO leaves it): counted from the captured length,
		// 60-byte frame - 14 Ethernet = 46; addresses and proto 1 read off
		// tcpdump -xx (76b590c2 > 88ff7374).
		{"malformed-ipv4-bogus-header-length.pcap", map[Tuple]Count{
			tup("118.181.144.194", 0, "136.255.115.116", 0, 1): {1, 46},
		}, 0},
		// Only 39 bytes of the IPv6 header captured.
		{"malformed-ipv6-39-byte-header.pcap", map[Tuple]Count{}, 1},
		// Two ARP frames only.
		{"arp-who-has-and-reply.pcap", map[Tuple]Count{}, 2},
		// Hop-by-hop + routing type 0, then UDP 53 > 53; payload length 59.
		{"ipv6-exthdr-hopbyhop-routing0.pcap", map[Tuple]Count{
			tup("2001:4f8:4:7:2e0:81ff:fe52:ffff", 53, "2001:4f8:4:7:2e0:81ff:fe52:9a6b", 53, 17): {1, 99},
		}, 0},
		// See portOverrides and truncatedChain: payload length 36 in all
		// three frames; frame 2's extension header overruns the payload.
		{"ipv6-exthdr-destination-options-udp.pcap", map[Tuple]Count{
			tup("2001:4f8:4:7:2e0:81ff:fe52:ffff", 30000, "2001:4f8:4:7:2e0:81ff:fe52:9a6b", 13000, 17): {2, 152},
			tup("2001:4f8:4:7:2e0:81ff:fe52:ffff", 0, "2001:4f8:4:7:2e0:81ff:fe52:9a6b", 0, 60):         {1, 76},
		}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			exp, err := Tshark(ctx, ts, filepath.Join(dir, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range Diff(tc.want, exp.Flows, 20) {
				t.Error(l)
			}
			if exp.NonIP != tc.nonIP {
				t.Errorf("non-IP frames: got %d, want %d", exp.NonIP, tc.nonIP)
			}
		})
	}
}

// TestTsharkFragments checks the IPv6 fragment rules on ipv6-fragments-dns:
// frame 4 is a last fragment (id 1) whose first fragment is not in the file,
// so it keeps ports 0; frames 6-8 are one datagram (id 2) whose first
// fragment carries UDP 53 > 51851.
func TestTsharkFragments(t *testing.T) {
	ts := testkit.Tool(t, "tshark")
	exp, err := Tshark(context.Background(), ts, filepath.Join(testkit.Pcaps(t), "ipv6-fragments-dns.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	srv, cli := "2607:f740:b::f93", "2001:470:1f11:81f:d138:5f55:6d4:1fe2"
	want := map[Tuple]Count{
		tup(cli, 51850, srv, 53, 17): {1, 121},
		tup(srv, 53, cli, 51850, 17): {1, 371},
		tup(cli, 51851, srv, 53, 17): {2, 244},
		tup(srv, 0, cli, 0, 17):      {1, 390},
		tup(srv, 53, cli, 51851, 17): {3, 1480 + 1480 + 422},
	}
	for _, l := range Diff(want, exp.Flows, 20) {
		t.Error(l)
	}
}

// TestTsharkAllCaptures runs the parser over every capture: it must know
// every frame shape (it fails on one it cannot account for), and every frame
// is either in a flow or counted as non-IP.
func TestTsharkAllCaptures(t *testing.T) {
	if testing.Short() {
		t.Skip("every capture through tshark: skipped in -short mode")
	}
	ts := testkit.Tool(t, "tshark")
	for _, f := range Captures(t) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			exp, err := Tshark(context.Background(), ts, f)
			if err != nil {
				t.Fatal(err)
			}
			tot := Totals(exp.Flows)
			if exp.IP+exp.NonIP != exp.Frames || int(tot.Pkts) != exp.IP {
				t.Errorf("frames %d = ip %d + non-ip %d, flow packets %d", exp.Frames, exp.IP, exp.NonIP, tot.Pkts)
			}
			t.Logf("%d frames, %d in %d tuples (%d bytes), %d non-IP", exp.Frames, exp.IP, len(exp.Flows), tot.IPBytes, exp.NonIP)
		})
	}
}
