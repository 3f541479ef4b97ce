package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/nats-io/nats.go/jetstream"

	"netwatch/schema"
	"netwatch/testkit"
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

// TestRunInterruptedPipe: a publishing run reading a named pipe whose
// writer sends a header and 3 UDP frames and then stays open (`tcpdump -w -
// | agent -pcap /dev/stdin`): when the context ends (SIGINT/SIGTERM) while
// the read-ahead waits on the pipe, Run returns within a second or two,
// with no error, after publishing the 3 summaries it read (and the
// end-of-input markers).
func TestRunInterruptedPipe(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "live.pcap")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	writerDone := make(chan struct{})
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
		// Ethernet, IPv4 10.0.0.1 -> 10.0.0.2, UDP 5000 -> 6000 + i, 4 payload bytes: 32 IP bytes
		for i := 0; i < 3; i++ {
			frame := append([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x08, 0x00,
				0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
				0x13, 0x88, 0x17, 0x70 + byte(i), 0, 12, 0, 0}, 'd', 'a', 't', 'a')
			w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(int64(i+1), 0), CaptureLength: len(frame), Length: len(frame)}, frame)
		}
		<-release // stays open until the run is over
	}()
	defer func() { close(release); <-writerDone }()

	_, nc, _ := testkit.JetStream(t)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{PCAP: fifo, Sensor: "pipe", BatchSize: 64, BatchFlush: 200 * time.Millisecond,
		MetricsInterval: time.Hour, MaxInflight: 16, Snaplen: 262144}
	a := New(cfg, js, nil, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	for deadline := time.Now().Add(10 * time.Second); a.Stats.Received.Load() < 3; time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-done:
			t.Fatalf("Run returned before the interruption: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d frames read from the pipe after 10 s, want 3", a.Stats.Received.Load())
		}
	}
	time.Sleep(300 * time.Millisecond) // Next is now waiting on the pipe
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5 s of the interruption while reading a pipe")
	}
	s := readBack(t, js, cfg.Sensor, a.Boot)
	if s.packets != 3 || s.ipBytes != 3*32 || len(s.markers) != schema.Buckets {
		t.Fatalf("PACKETS: %d summaries, %d IP bytes, %d end-of-input markers; want 3, 96, %d", s.packets, s.ipBytes,
			len(s.markers), schema.Buckets)
	}
}
