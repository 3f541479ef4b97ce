package communityid_test

import (
	"encoding/json"
	"net/netip"
	. "netwatch/schema/communityid"
	"os"
	"path/filepath"
	"testing"

	"netwatch/testkit"
)

// vector is one entry of the spec's baseline/*.json: for ICMP, sport/dport
// already hold the spec's type/counterpart (or type/code) mapping.
type vector struct {
	Proto       uint8   `json:"proto"`
	Saddr       string  `json:"saddr"`
	Daddr       string  `json:"daddr"`
	Sport       *uint16 `json:"sport"`
	Dport       *uint16 `json:"dport"`
	CommunityID string  `json:"communityid"`
}

// TestVectors checks every vector of the spec's baselines (community-id-spec
// commit b1fe530, copied to ../shared/data/community-id): seed 0 base64,
// seed 1 base64, seed 0 hex.
func TestVectors(t *testing.T) {
	dir := filepath.Join(testkit.Shared(t), "data", "community-id")
	for _, tc := range []struct {
		file string
		seed uint16
		hex  bool
	}{{"baseline_deflt.json", 0, false}, {"baseline_seed1.json", 1, false}, {"baseline_nob64.json", 0, true}} {
		t.Run(tc.file, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join(dir, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			var vs []vector
			if err := json.Unmarshal(raw, &vs); err != nil {
				t.Fatal(err)
			}
			if len(vs) == 0 {
				t.Fatal("no vectors")
			}
			for i, v := range vs {
				s := netip.MustParseAddr(v.Saddr).AsSlice()
				d := netip.MustParseAddr(v.Daddr).AsSlice()
				var sp, dp uint16
				if v.Sport != nil {
					sp, dp = *v.Sport, *v.Dport
				}
				var got string
				if v.Proto == ProtoICMP || v.Proto == ProtoICMPv6 {
					// The file gives the mapped pair; a paired type maps to the
					// same pair again, a one-way type keeps (type, code).
					got = Packet(tc.seed, v.Proto, s, d, 0, 0, uint8(sp), uint8(dp))
					if !tc.hex {
						// Also check the generic entry point with the raw pair.
						_, _, oneWay := ICMPPorts(v.Proto == ProtoICMPv6, uint8(sp), uint8(dp))
						if g2 := ID(tc.seed, v.Proto, s, d, sp, dp, oneWay); g2 != got {
							t.Errorf("#%d: ID %s != Packet %s", i, g2, got)
						}
					}
				} else {
					got = Packet(tc.seed, v.Proto, s, d, sp, dp, 0, 0)
				}
				if tc.hex {
					oneWay := false
					if v.Proto == ProtoICMP || v.Proto == ProtoICMPv6 {
						_, _, oneWay = ICMPPorts(v.Proto == ProtoICMPv6, uint8(sp), uint8(dp))
					}
					got = HexID(tc.seed, v.Proto, s, d, sp, dp, oneWay)
				}
				if got != v.CommunityID {
					t.Errorf("#%d %+v: got %s, want %s", i, v, got, v.CommunityID)
				}
			}
			t.Logf("%d vectors", len(vs))
		})
	}
}

// TestSpecExample is the ordering example of the spec's "Technical details":
// both directions of 10.0.0.1:1234 <-> 127.0.0.1:80 hash alike.
func TestSpecExample(t *testing.T) {
	a := netip.MustParseAddr("10.0.0.1").AsSlice()
	b := netip.MustParseAddr("127.0.0.1").AsSlice()
	if x, y := ID(0, ProtoTCP, a, b, 1234, 80, false), ID(0, ProtoTCP, b, a, 80, 1234, false); x != y {
		t.Fatalf("%s != %s", x, y)
	}
}

// TestICMPRawTypes checks the mapping from raw type/code: an echo request
// (8/0) and its reply (0/0) in opposite directions share the vector's id.
func TestICMPRawTypes(t *testing.T) {
	a := netip.MustParseAddr("192.168.0.89").AsSlice()
	b := netip.MustParseAddr("192.168.0.1").AsSlice()
	const want = "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=" // baseline_deflt.json, icmp.pcap
	if got := Packet(0, ProtoICMP, a, b, 0, 0, 8, 0); got != want {
		t.Errorf("request: %s", got)
	}
	if got := Packet(0, ProtoICMP, b, a, 0, 0, 0, 0); got != want {
		t.Errorf("reply: %s", got)
	}
}

func BenchmarkID(b *testing.B) {
	s := netip.MustParseAddr("10.0.0.1").AsSlice()
	d := netip.MustParseAddr("10.0.0.2").AsSlice()
	b.ReportAllocs()
	for b.Loop() {
		ID(0, ProtoTCP, s, d, 40000, 443, false)
	}
}
