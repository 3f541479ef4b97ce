package pipeline

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"netwatch/agent/internal/decode"
	"netwatch/testkit"
)

// linkFrame is one IPv4 (or, for 229, IPv6) UDP datagram of 28 (48) IP
// bytes behind the link header of link type lt.
func linkFrame(lt int) []byte {
	ip4 := tIPv4("192.0.2.1", "192.0.2.2", 17, tUDP(12345, 12345, nil))
	switch lt {
	case 0:
		return append(binary.LittleEndian.AppendUint32(nil, 2), ip4...) // AF_INET, host order
	case 108:
		return append(binary.BigEndian.AppendUint32(nil, 2), ip4...) // AF_INET, network order
	case 1:
		return tEth(0x0800, ip4)
	case 113: // SLL: packet type, ARPHRD, address length, 8 address bytes, protocol
		return append(append(make([]byte, 14), 0x08, 0x00), ip4...)
	case 276: // SLL2: protocol, reserved, interface index, ARPHRD, packet type, address
		return append(append([]byte{0x08, 0x00}, make([]byte, 18)...), ip4...)
	case 229:
		return tIPv6("2001:db8::1", "2001:db8::2", 17, tUDP(12345, 12345, nil))
	}
	return ip4 // 12, 14, 101, 228: raw IP
}

// TestLinkTypeNames (issue 3): -summary's link_types keys are the names
// capinfos prints as "File encapsulation" for the same file — DLT 228 and
// 229 "Raw IPv4" and "Raw IPv6" (before: gopacket's "UnknownLinkType" for
// both, and for 14), 12/14/101 "Raw IP", SLL "Linux cooked-mode capture v1"
// — and each file's one datagram counts as an IP frame; the unsupported link
// types named in errors (147, 105) have capinfos' names too.
func TestLinkTypeNames(t *testing.T) {
	capinfos := testkit.Tool(t, "capinfos")
	dir := t.TempDir()
	name := func(file string) string {
		out, err := exec.Command(capinfos, "-E", file).CombinedOutput()
		if err != nil {
			t.Fatalf("capinfos %s: %v %s", file, err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(l, "File encapsulation:"); ok {
				return strings.TrimSpace(v)
			}
		}
		t.Fatalf("capinfos %s: no encapsulation in %s", file, out)
		return ""
	}
	write := func(lt int, frame []byte) string {
		file := filepath.Join(dir, fmt.Sprintf("lt%d.pcap", lt))
		b := binary.LittleEndian.AppendUint32(nil, 0xa1b2c3d4)
		b = binary.LittleEndian.AppendUint16(b, 2)
		b = binary.LittleEndian.AppendUint16(b, 4)
		b = append(b, make([]byte, 8)...)
		b = binary.LittleEndian.AppendUint32(b, 65535)
		b = binary.LittleEndian.AppendUint32(b, uint32(lt))
		b = binary.LittleEndian.AppendUint32(b, 1_700_000_000)
		b = binary.LittleEndian.AppendUint32(b, 0)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(frame)))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(frame)))
		if err := os.WriteFile(file, append(b, frame...), 0o644); err != nil {
			t.Fatal(err)
		}
		return file
	}
	for _, lt := range []int{0, 1, 12, 14, 101, 108, 113, 228, 229, 276} {
		file := write(lt, linkFrame(lt))
		want := name(file)
		r, err := Summarize(file, nil)
		if err != nil {
			t.Fatalf("link type %d: %v", lt, err)
		}
		wantBytes := uint64(28)
		if lt == 229 {
			wantBytes = 48
		}
		lc := r.LinkTypes[want]
		if len(r.LinkTypes) != 1 || lc == nil || lc.Packets != 1 || lc.IPBytes != wantBytes || r.IPPackets != 1 {
			keys := []string{}
			for k := range r.LinkTypes {
				keys = append(keys, k)
			}
			t.Errorf("link type %d: link_types %q (IP packets %d), want one key %q with 1 packet of %d IP bytes",
				lt, keys, r.IPPackets, want, wantBytes)
		}
	}
	for _, lt := range []int{105, 147, 162} {
		if got, want := decode.LinkName(layers.LinkType(lt)), name(write(lt, make([]byte, 40))); got != want {
			t.Errorf("link type %d: named %q, capinfos %q", lt, got, want)
		}
	}
	if got := decode.LinkName(250); got != "link type 250" {
		t.Errorf("link type 250: %q", got)
	}
}
