package fleet_test

import (
	"context"
	"encoding/binary"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"netwatch/testkit"
)

// tcpFrame is an Ethernet/IPv4/TCP frame a:sp -> b:dp with TCP flags
// (checksums zero: tshark does not check them by default).
func tcpFrame(a, b [4]byte, sp, dp uint16, flags byte) []byte {
	f := make([]byte, 14+20+20)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], 40)
	copy(ip[12:], a[:])
	copy(ip[16:], b[:])
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], sp)
	binary.BigEndian.PutUint16(tcp[2:], dp)
	tcp[12], tcp[13] = 5<<4, flags
	return f
}

// writePcap writes a classic pcap (microseconds, Ethernet) of frames at
// times ts (seconds).
func writePcap(t *testing.T, path string, ts []float64, frames [][]byte) {
	b := binary.LittleEndian.AppendUint32(nil, 0xa1b2c3d4)
	b = binary.LittleEndian.AppendUint16(b, 2)
	b = binary.LittleEndian.AppendUint16(b, 4)
	b = append(b, make([]byte, 8)...)
	b = binary.LittleEndian.AppendUint32(b, 65535)
	b = binary.LittleEndian.AppendUint32(b, 1)
	for i, f := range frames {
		sec := uint32(ts[i])
		b = binary.LittleEndian.AppendUint32(b, sec)
		b = binary.LittleEndian.AppendUint32(b, uint32((ts[i]-float64(sec))*1e6+0.5))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(f)))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCapturedFlowsTCPEnds checks the fleet test's capture-side count
// (capturedFlows) on hand-made captures of one 5-tuple 10.0.0.1:40000 ->
// 10.0.0.2:80: a refused SYN (SYN, RST) and a new connection on the same
// port 5 s later are two flows (counted by hand: the enricher ends a flow
// 2 s after its RST); 2.08 s later they may be one or two (unsure, as in
// the run that failed); a connection closed by FIN both ways and nothing
// after it is one.
func TestCapturedFlowsTCPEnds(t *testing.T) {
	if _, err := exec.LookPath("tshark"); err != nil {
		testkit.Unavailable(t, "no tshark: %v", err)
	}
	a, b := [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}
	const syn, ack, fin, rst = 0x02, 0x10, 0x01, 0x04
	c := connOf(netip.AddrFrom4(a), 40000, netip.AddrFrom4(b), 80, 6, 0)
	for _, tc := range []struct {
		name       string
		second     float64 // when the new connection's SYN comes
		want       int
		wantUnsure bool
	}{{"5s", 5, 2, false}, {"2.08s", 2.08, 1, true}} {
		ts := []float64{100, 100.001, 100 + tc.second, 100 + tc.second + 0.001, 100 + tc.second + 0.002}
		frames := [][]byte{tcpFrame(a, b, 40000, 80, syn), tcpFrame(b, a, 80, 40000, rst|ack),
			tcpFrame(a, b, 40000, 80, syn), tcpFrame(b, a, 80, 40000, syn|ack), tcpFrame(a, b, 40000, 80, ack)}
		path := filepath.Join(t.TempDir(), tc.name+".pcap")
		writePcap(t, path, ts, frames)
		want, unsure, err := capturedFlows(context.Background(), path)
		if err != nil {
			t.Fatal(err)
		}
		if want[c] != tc.want || unsure[c] != tc.wantUnsure {
			t.Errorf("%s: %d flows, unsure %v; want %d, %v", tc.name, want[c], unsure[c], tc.want, tc.wantUnsure)
		}
	}
	ts := []float64{100, 100.001, 100.002, 100.003, 100.004}
	frames := [][]byte{tcpFrame(a, b, 40000, 80, syn), tcpFrame(b, a, 80, 40000, syn|ack), tcpFrame(a, b, 40000, 80, fin|ack),
		tcpFrame(b, a, 80, 40000, fin|ack), tcpFrame(a, b, 40000, 80, ack)}
	path := filepath.Join(t.TempDir(), "fin.pcap")
	writePcap(t, path, ts, frames)
	want, unsure, err := capturedFlows(context.Background(), path)
	if err != nil || want[c] != 1 || unsure[c] {
		t.Errorf("FIN both ways, last ACK: %d flows, unsure %v, %v; want 1", want[c], unsure[c], err)
	}
}
