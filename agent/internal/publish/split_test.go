package publish

import (
	"log/slog"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"netwatch/agent/internal/capture"
	"netwatch/agent/internal/decode"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// TestBatcherSplitClientHello: Chrome 34's ClientHello
// (tls12-clienthello-sni-google-de.pcap frame 4, 209 bytes of TCP payload
// by tshark) sent as two segments of 120 and 89 bytes. The second segment
// does not look like TLS on its own, yet its summary must carry the JA3
// that tshark computes for the whole ClientHello, and the first the SNI.
func TestBatcherSplitClientHello(t *testing.T) {
	src, err := capture.OpenFile(filepath.Join(testkit.Pcaps(t), "tls12-clienthello-sni-google-de.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var frame []byte
	for i := 0; i < 4; i++ {
		data, _, _, err := src.Next()
		if err != nil {
			t.Fatal(err)
		}
		frame = append(frame[:0], data...)
	}
	d, err := decode.New(src.LinkType())
	if err != nil {
		t.Fatal(err)
	}
	var p decode.Packet
	if d.Decode(frame, &p) != decode.KindIP || len(p.Payload) != 209 {
		t.Fatalf("frame 4: payload %d bytes, tshark says 209", len(p.Payload))
	}
	full := p.Payload
	// a publisher without a send loop keeps the first message in its queue
	pub := &Publisher{log: slog.New(slog.DiscardHandler)}
	pub.cond = sync.NewCond(&pub.mu)
	bt := NewBatcher(pub, "t", "boot", 1024, 0)
	first, second := p, p
	first.Payload, first.PayloadBytes, first.IPBytes = full[:120], 120, p.IPBytes-89
	second.Payload, second.PayloadBytes, second.IPBytes = full[120:], 89, p.IPBytes-120
	second.Seq = p.Seq + 120
	if decode.App(&second) != "" {
		t.Fatal("the second segment alone is recognised; the test needs one that is not")
	}
	bt.Add(&first)
	bt.Add(&second)
	bt.FlushAll()
	if len(pub.queue) != 1 {
		t.Fatalf("%d messages queued, want 1", len(pub.queue))
	}
	var b pb.PacketBatch
	if err := proto.Unmarshal(pub.queue[0].data, &b); err != nil {
		t.Fatal(err)
	}
	if len(b.Packets) != 2 {
		t.Fatalf("%d summaries, want 2", len(b.Packets))
	}
	if s := b.Packets[0]; s.TlsSni != "google.de" || s.Ja3 != "" {
		t.Errorf("first segment: sni %q ja3 %q, want google.de and none yet", s.TlsSni, s.Ja3)
	}
	if s := b.Packets[1]; s.Ja3 != "a607f3a5c94c2ee592af1456f36c8367" { // tshark tls.handshake.ja3
		t.Errorf("second segment: ja3 %q (%v)", s.Ja3, s)
	}
}
