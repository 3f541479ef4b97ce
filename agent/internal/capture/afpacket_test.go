package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/gopacket/gopacket/layers"

	"netwatch/testkit"
)

// tunDevice creates a tun interface (ARPHRD_NONE: frames are bare IP
// packets), attaches a file to it (so it has a carrier and written packets
// are received by the kernel on it), sets it up and returns its name and the
// file. Both are removed when the test ends.
func tunDevice(t *testing.T) (string, *os.File) {
	t.Helper()
	if os.Geteuid() != 0 {
		testkit.Unavailable(t, "a tun interface needs root")
	}
	ipPath := testkit.Tool(t, "ip")
	name := fmt.Sprintf("nwtun%d", os.Getpid()%100000)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ipPath, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("tuntap", "add", "dev", name, "mode", "tun")
	t.Cleanup(func() { _ = exec.Command(ipPath, "link", "del", name).Run() })
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		testkit.Unavailable(t, "open /dev/net/tun: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	// struct ifreq: 16-byte name, then short flags (linux/if_tun.h).
	const tunSetIff, iffTun, iffNoPI = 0x400454ca, 0x0001, 0x1000
	var ifr [40]byte
	copy(ifr[:16], name)
	binary.NativeEndian.PutUint16(ifr[16:], iffTun|iffNoPI)
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), tunSetIff, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		t.Fatalf("TUNSETIFF %s: %v", name, e)
	}
	run("link", "set", name, "up")
	return name, f
}

// udp4 builds a bare IPv4/UDP packet 10.251.0.1:40000 -> 10.251.0.2:port
// with payload zero bytes (header checksum filled in, UDP checksum 0).
func udp4(port, payload int) []byte {
	p := make([]byte, 28+payload)
	p[0], p[8], p[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	copy(p[12:], []byte{10, 251, 0, 1, 10, 251, 0, 2})
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(p[20:], 40000)
	binary.BigEndian.PutUint16(p[22:], uint16(port))
	binary.BigEndian.PutUint16(p[24:], uint16(8+payload))
	return p
}

// TestAFPacketTun opens AF_PACKET on a tun interface made by the test (raw IP,
// LINKTYPE_RAW 101) with a filter like the agent's: libpcap compiles it for
// DLT_RAW (12) — handing it 101 failed with "unknown data link type 101". Of 5
// datagrams to the filter's port and 3 to another, written into the tun, the
// capture returns exactly the 5 (hand count), each a bare IPv4 packet of
// 28 + 100 bytes.
func TestAFPacketTun(t *testing.T) {
	name, f := tunDevice(t)
	src, err := OpenAFPacket(AFPacketConfig{Interface: name, Snaplen: 262144,
		BPF: "(udp dst port 40001) and not (tcp port 4222 or tcp port 5432)", Timeout: 100 * time.Millisecond},
		func(l layers.LinkType) bool { return l == layers.LinkTypeRaw })
	if err != nil {
		t.Fatalf("open af_packet on tun: %v", err)
	}
	defer src.Close()
	if src.LinkType() != layers.LinkTypeRaw {
		t.Fatalf("link type %v, want Raw", src.LinkType())
	}
	for _, port := range []int{40001, 40002, 40001, 40002, 40001, 40002, 40001, 40001} {
		if _, err := f.Write(udp4(port, 100)); err != nil {
			t.Fatal(err)
		}
	}
	got, quiet := 0, 0
	for quiet < 5 {
		data, ci, _, err := src.Next()
		if errors.Is(err, ErrTimeout) {
			quiet++
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(data) != 128 || ci.Length != 128 || data[0] != 0x45 || binary.BigEndian.Uint16(data[22:]) != 40001 {
			t.Fatalf("frame %d: %d bytes (wire %d), % x...", got, len(data), ci.Length, data[:min(len(data), 24)])
		}
		got++
	}
	if got != 5 {
		t.Fatalf("captured %d datagrams to port 40001, want 5", got)
	}
}
