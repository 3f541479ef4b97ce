package fragment

import (
	"encoding/binary"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"netwatch/agent/internal/decode"
)

// frag is an Ethernet frame with an IPv4 fragment 10.0.0.1 -> 10.0.0.2,
// IP id 0x4242, UDP, fragment offset off bytes, n payload bytes.
func frag(off, n int, more bool, payload []byte) []byte {
	f := make([]byte, 14+20+n)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+n))
	binary.BigEndian.PutUint16(ip[4:], 0x4242)
	fo := uint16(off / 8)
	if more {
		fo |= 0x2000
	}
	binary.BigEndian.PutUint16(ip[6:], fo)
	ip[8], ip[9] = 64, 17
	copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	copy(ip[20:], payload)
	return f
}

// TestReverseOrderWithDuplicate: a 4,000-byte UDP datagram (8-byte header
// 5000 -> 6000 and 3,992 data bytes) in three fragments of 1480, 1480 and
// 1040 bytes (offsets 0, 1480, 2960; IP totals 1500, 1500, 1060), sent last
// first with the middle one twice. Every frame counts (DESIGN.md: each IP
// frame once), all four with the first fragment's ports in one datagram:
// 1060 + 1500 + 1500 + 1500 = 5560 IP bytes.
func TestReverseOrderWithDuplicate(t *testing.T) {
	udp := make([]byte, 1480)
	binary.BigEndian.PutUint16(udp[0:], 5000)
	binary.BigEndian.PutUint16(udp[2:], 6000)
	binary.BigEndian.PutUint16(udp[4:], 4000)
	frames := [][]byte{frag(2960, 1040, false, nil), frag(1480, 1480, true, nil), frag(1480, 1480, true, nil), frag(0, 1480, true, udp)}
	d, _ := decode.New(layers.LinkTypeEthernet)
	tab := New()
	var n, bytes int
	ids := map[uint32]bool{}
	emit := func(p *decode.Packet) {
		n++
		bytes += int(p.IPBytes)
		ids[p.IPID] = true
		if p.SrcPort != 5000 || p.DstPort != 6000 || p.Proto != 17 {
			t.Errorf("fragment at %d: ports %d -> %d proto %d, want 5000 -> 6000 udp", p.FragOffset, p.SrcPort, p.DstPort, p.Proto)
		}
	}
	var p decode.Packet
	for i, f := range frames {
		p.TsNs = int64(i) * 1e6 // 1 ms apart, well within Hold
		if d.Decode(f, &p) != decode.KindIP {
			t.Fatalf("frame %d: %+v", i, p)
		}
		tab.Process(&p, emit)
	}
	tab.Flush(emit)
	if n != 4 || bytes != 5560 || len(ids) != 1 {
		t.Errorf("%d packets, %d IP bytes, %d datagrams; want 4, 5560, 1", n, bytes, len(ids))
	}
}

// vlanFrag is frag inside an 802.1Q tag with VLAN id vid.
func vlanFrag(vid uint16, off, n int, more bool, payload []byte) []byte {
	f := frag(off, n, more, payload)
	out := make([]byte, 0, len(f)+4)
	out = append(out, f[:12]...)
	out = binary.BigEndian.AppendUint16(out, 0x8100)
	out = binary.BigEndian.AppendUint16(out, vid)
	return append(out, f[12:]...)
}

// TestSameIDTwoVLANs: the same addresses and IP id in VLANs 10 and 20 at
// once (QA of issue 3), frames in the order: VLAN 20's second fragment,
// VLAN 10's first (1111 -> 2222), VLAN 20's first (3333 -> 4444), VLAN 10's
// second. Each second fragment takes the ports of its own VLAN's first
// (by hand: VLAN 10 1111 -> 2222 twice, VLAN 20 3333 -> 4444 twice).
func TestSameIDTwoVLANs(t *testing.T) {
	udp := func(sp, dp uint16) []byte {
		b := make([]byte, 1480)
		binary.BigEndian.PutUint16(b[0:], sp)
		binary.BigEndian.PutUint16(b[2:], dp)
		binary.BigEndian.PutUint16(b[4:], 1488+528)
		return b
	}
	frames := [][]byte{vlanFrag(20, 1480, 528, false, nil), vlanFrag(10, 0, 1480, true, udp(1111, 2222)),
		vlanFrag(20, 0, 1480, true, udp(3333, 4444)), vlanFrag(10, 1480, 528, false, nil)}
	want := map[uint16][2]uint16{10: {1111, 2222}, 20: {3333, 4444}}
	d, _ := decode.New(layers.LinkTypeEthernet)
	tab := New()
	n := 0
	emit := func(p *decode.Packet) {
		n++
		if w := want[p.VLAN]; p.SrcPort != w[0] || p.DstPort != w[1] {
			t.Errorf("VLAN %d fragment at %d: ports %d -> %d, want %d -> %d", p.VLAN, p.FragOffset, p.SrcPort, p.DstPort, w[0], w[1])
		}
	}
	var p decode.Packet
	for i, f := range frames {
		p.TsNs = int64(i) * 1e6
		if d.Decode(f, &p) != decode.KindIP {
			t.Fatalf("frame %d: %+v", i, p)
		}
		tab.Process(&p, emit)
	}
	if n != 4 {
		t.Errorf("%d fragments emitted, want 4", n)
	}
}

// TestExpireIdle: a lone non-first fragment is held for its first; Expire
// before Hold keeps it, Expire after Hold (what a live capture's idle read
// calls, QA of issue 3) emits it without ports, once.
func TestExpireIdle(t *testing.T) {
	d, _ := decode.New(layers.LinkTypeEthernet)
	tab := New()
	var p decode.Packet
	p.TsNs = 10e9
	if d.Decode(frag(1480, 100, false, nil), &p) != decode.KindIP {
		t.Fatalf("%+v", p)
	}
	n := 0
	emit := func(q *decode.Packet) {
		n++
		if q.SrcPort != 0 || q.DstPort != 0 || q.FragOffset != 1480 {
			t.Errorf("emitted %d -> %d at offset %d, want no ports at 1480", q.SrcPort, q.DstPort, q.FragOffset)
		}
	}
	tab.Process(&p, emit)
	tab.Expire(10e9+int64(tab.Hold)/2, emit)
	if n != 0 || tab.Pending() != 1 {
		t.Fatalf("before Hold: %d emitted, %d pending; want 0 and 1", n, tab.Pending())
	}
	tab.Expire(10e9+2*int64(tab.Hold), emit)
	tab.Expire(10e9+3*int64(tab.Hold), emit)
	if n != 1 || tab.Pending() != 0 {
		t.Fatalf("after Hold: %d emitted, %d pending; want 1 and 0", n, tab.Pending())
	}
}
