package publish

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"netwatch/agent/internal/decode"
	"netwatch/schema"
	"netwatch/schema/pb"
)

// Batcher keeps one open PacketBatch per bucket of schema.PacketsSubject
// and hands full or old batches to a Publisher. Packet summaries are
// encoded as they arrive (encode.go), so a batch needs no intermediate
// pb.PacketSummary values and no reflection-based marshalling, and the
// message buffers are reused once the stream acknowledges them. Not safe for
// concurrent use: each capture worker uses its own Batcher from Fork.
type Batcher struct {
	Size  int           // packets per batch; a batch is sent when full
	Flush time.Duration // a batch is sent when its first packet is this old (wall clock)
	// Full adds tcp_seq, tcp_ack and every packet's ip_id to the summaries
	// (-summary.full); without it they are left out (0) except the ip_id
	// of fragments.
	Full bool

	sensor, boot string
	pub          *Publisher
	seq          *atomic.Uint64 // shared by the forks of one batcher
	wmark        *atomic.Int64  // the last watermark sent (Watermarks), shared by the forks; 0 for none
	buckets      [schema.Buckets]bucket
	l7           decode.L7
	subjects     [schema.Buckets]string
	bufs         *bufPool // message buffers, shared with the forks
}

// bucket is one open batch: buf holds headerRoom bytes kept free for the
// PacketBatch header, then the encoded packets fields. At send the header is
// written right before the packets and the message is buf[start:], so a
// batch is encoded once, in the buffer that is published, and never copied.
type bucket struct {
	buf    *[]byte
	n      int
	opened time.Time
	arp    []byte // encoded PacketBatch.arp fields (field 8: written after the trailer)
	arps   int
}

// MaxBatchBytes bounds the encoded packets of one batch: a batch is sent
// when it reaches this size even if it holds fewer than Size packets, so
// that messages stay well below the NATS max_payload (1 MiB by default;
// nats.conf sets 8 MiB) whatever the L7 fields.
const MaxBatchBytes = 512 << 10

// NewBatcher returns a batcher of size packets per batch (1024 when 0) and
// flush age (200 ms when 0) for sensor and boot id.
func NewBatcher(pub *Publisher, sensor, boot string, size int, flush time.Duration) *Batcher {
	if size <= 0 {
		size = 1024
	}
	if flush <= 0 {
		flush = 200 * time.Millisecond
	}
	b := &Batcher{Size: size, Flush: flush, sensor: sensor, boot: boot, pub: pub, seq: new(atomic.Uint64),
		wmark: new(atomic.Int64), bufs: &bufPool{}}
	for i := range b.subjects {
		b.subjects[i] = schema.PacketsSubject(sensor, uint32(i))
	}
	return b
}

// Fork returns a batcher with its own open batches that shares b's
// publisher, sensor, boot and message sequence (so Nats-Msg-Ids stay
// unique): one per capture worker. b and its forks may be used from
// different goroutines, each by one.
func (b *Batcher) Fork() *Batcher {
	f := &Batcher{Size: b.Size, Flush: b.Flush, Full: b.Full, sensor: b.sensor, boot: b.boot, pub: b.pub, seq: b.seq,
		wmark: b.wmark, subjects: b.subjects, bufs: b.bufs}
	return f
}

// Seq is the sequence number of the last message sent by b or its forks.
func (b *Batcher) Seq() uint64 { return b.seq.Load() }

// Add appends p (a KindIP packet) to its bucket's batch, decoding light L7
// when the payload looks like DNS, TLS or HTTP, and sends the batch when full.
func (b *Batcher) Add(p *decode.Packet) {
	bi := packetBucket(p)
	bk := &b.buckets[bi]
	if bk.n == 0 && bk.arps == 0 {
		bk.opened = time.Now()
		if bk.buf == nil {
			bk.buf = b.message(b.headerRoom() + 128*b.Size)
			*bk.buf = (*bk.buf)[:b.headerRoom()]
		}
	}
	var l7 *decode.L7
	// a TCP segment may continue a ClientHello split over segments
	if decode.App(p) != "" || p.Proto == 6 && b.l7.TLSPending() {
		decode.ParseL7(p, &b.l7)
		l7 = &b.l7
	}
	// tag, a one-byte length placeholder, the summary; a summary of 128
	// bytes or more moves right by the extra length bytes
	data := append(*bk.buf, batchPackets<<3|byte(protowire.BytesType), 0)
	at := len(data)
	data = appendSummary(data, p, l7, b.Full)
	if n := len(data) - at; n < 0x80 {
		data[at-1] = byte(n)
	} else {
		extra := protowire.SizeVarint(uint64(n)) - 1
		data = append(data, make([]byte, extra)...)
		copy(data[at+extra:], data[at:at+n])
		protowire.AppendVarint(data[:at-1], uint64(n))
	}
	*bk.buf = data
	bk.n++
	if bk.n >= b.Size || len(data) >= MaxBatchBytes {
		b.send(bi)
	}
}

// AddARP appends the ArpSummary of p (an ARP frame, p.ARP.OK) to the batch
// of bucket schema.AddrBucket(sender IP), which it may share with packet
// summaries, and sends the batch when full.
func (b *Batcher) AddARP(p *decode.Packet) {
	bi := schema.AddrBucket(p.ARP.SenderIP[:])
	bk := &b.buckets[bi]
	if bk.n == 0 && bk.arps == 0 {
		bk.opened = time.Now()
		if bk.buf == nil {
			bk.buf = b.message(b.headerRoom() + 128*b.Size)
			*bk.buf = (*bk.buf)[:b.headerRoom()]
		}
	}
	bk.arp = appendARP(bk.arp, p)
	bk.arps++
	if bk.n+bk.arps >= b.Size || len(*bk.buf)+len(bk.arp) >= MaxBatchBytes {
		b.send(bi)
	}
}

// headerRoom is the room kept before a batch's packets for its header:
// sensor, boot, a sequence number of up to 10 bytes and the bucket.
func (b *Batcher) headerRoom() int { return 2*(2+2) + len(b.sensor) + len(b.boot) + 11 + 3 }

// message returns a buffer for one message, reused after its ack.
func (b *Batcher) message(size int) *[]byte { return b.bufs.get(size) }

func (b *Batcher) recycle(bp *[]byte) { b.bufs.put(bp) }

// maxFreeBytes bounds the capacity of the message buffers kept for reuse
// (about 32–64 batches: enough for the batches opened while others are
// acked), on top of the open batches and those awaiting their ack, so
// that the agent stays under its memory bound (-buffer.max-mb, README).
const maxFreeBytes = 8 << 20

// bufPool keeps message buffers between a batch's ack and the next batch
// opened. Unlike a sync.Pool it is not emptied by the garbage collector, so
// the buffers that grew for long (DNS, TLS) summaries stay grown instead of
// being allocated and grown again after every collection.
type bufPool struct {
	mu    sync.Mutex
	free  []*[]byte
	bytes int // capacity of free
}

func (p *bufPool) get(size int) *[]byte {
	p.mu.Lock()
	if n := len(p.free); n > 0 {
		bp := p.free[n-1]
		p.free[n-1] = nil
		p.free = p.free[:n-1]
		p.bytes -= cap(*bp)
		p.mu.Unlock()
		if cap(*bp) >= size {
			*bp = (*bp)[:0]
			return bp
		}
	} else {
		p.mu.Unlock()
	}
	s := make([]byte, 0, size)
	return &s
}

func (p *bufPool) put(bp *[]byte) {
	if cap(*bp) > 2*MaxBatchBytes {
		return
	}
	p.mu.Lock()
	if p.bytes+cap(*bp) <= maxFreeBytes {
		p.free = append(p.free, bp)
		p.bytes += cap(*bp)
	}
	p.mu.Unlock()
}

func (b *Batcher) send(bi uint32) {
	bk := &b.buckets[bi]
	if bk.n == 0 && bk.arps == 0 {
		return
	}
	seq := b.seq.Add(1)
	room := b.headerRoom()
	var hdr [128]byte
	h := appendBatchHeader(hdr[:0], b.sensor, b.boot, seq, bi)
	bp := bk.buf
	start := room - len(h)
	copy((*bp)[start:], h)
	*bp = appendBatchTrailer(*bp, false, time.Now().UnixNano())
	*bp = append(*bp, bk.arp...)
	if w := b.wmark.Load(); w > 0 {
		// every packet of the bucket before the last watermark sent is
		// in an earlier batch (or this one): the enricher knows the
		// sensor sends watermarks from any of its batches
		*bp = appendUint(*bp, batchWatermark, uint64(w))
	}
	data := (*bp)[start:]
	n := bk.n + bk.arps // summaries lost if a full buffer drops the batch
	bk.n, bk.arps, bk.arp = 0, 0, bk.arp[:0]
	bk.buf = nil
	b.pub.publish(b.subjects[bi], schema.PacketBatchID(b.sensor, b.boot, seq), data, n, func() { b.recycle(bp) })
}

// Tick sends every batch whose first packet is older than Flush at now.
func (b *Batcher) Tick(now time.Time) {
	for i := range b.buckets {
		if bk := &b.buckets[i]; bk.n+bk.arps > 0 && now.Sub(bk.opened) >= b.Flush {
			b.send(uint32(i))
		}
	}
}

// FlushAll sends every open batch.
func (b *Batcher) FlushAll() {
	for i := range b.buckets {
		b.send(uint32(i))
	}
}

// EndOfInput sends every open batch, waits for their acks (so that no
// retried batch can arrive after a marker), then sends an end-of-input
// marker on every bucket of the sensor and waits for those acks.
func (b *Batcher) EndOfInput(ctx context.Context) error {
	b.FlushAll()
	if err := b.pub.Wait(ctx); err != nil {
		return fmt.Errorf("wait for packet batch acks: %w", err)
	}
	for i := uint32(0); i < schema.Buckets; i++ {
		seq := b.seq.Add(1)
		m := pb.PacketBatch{Sensor: b.sensor, Boot: b.boot, Seq: seq, Bucket: i, EndOfInput: true,
			SentNs: time.Now().UnixNano()}
		data, err := proto.Marshal(&m)
		if err != nil {
			return fmt.Errorf("marshal end-of-input marker: %w", err)
		}
		b.pub.Publish(b.subjects[i], schema.PacketBatchID(b.sensor, b.boot, seq), data)
	}
	if err := b.pub.Wait(ctx); err != nil {
		return fmt.Errorf("wait for end-of-input acks: %w", err)
	}
	return nil
}
