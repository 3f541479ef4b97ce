package pipeline

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// TestSummarizeInterrupted reads a capture from a named pipe whose writer
// sends a header and 3 frames and then stays open, as a live `tcpdump -w -`
// would: when the context ends (SIGINT/SIGTERM in the agent), the read that
// waits on the pipe ends and the report holds the 3 frames, marked
// interrupted, with ErrInterrupted.
func TestSummarizeInterrupted(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "live.pcap")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	writerDone := make(chan struct{})
	t.Cleanup(func() { <-writerDone })
	release := make(chan struct{})
	go func() {
		defer close(writerDone)
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		w := pcapgo.NewWriter(f)
		w.WriteFileHeader(65535, layers.LinkTypeEthernet)
		frame := append([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x06}, make([]byte, 28)...) // ARP
		for i := 0; i < 3; i++ {
			w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(int64(i+1), 0), CaptureLength: len(frame), Length: len(frame)}, frame)
		}
		<-release // stays open until the test ends
	}()
	defer close(release)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(500*time.Millisecond, cancel)
	r, err := SummarizeContext(ctx, fifo, nil)
	if !errors.Is(err, ErrInterrupted) || !r.Interrupted || r.Packets != 3 || r.NonIP != 3 {
		t.Fatalf("err %v, interrupted %v, packets %d, non-IP %d; want ErrInterrupted after 3 ARP frames", err, r.Interrupted, r.Packets, r.NonIP)
	}
}
