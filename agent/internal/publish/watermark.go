package publish

import (
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// Watermarks sends a live sensor's in-band watermarks: every Interval, a
// PacketBatch without packets and with watermark_ns = W on each of the
// sensor's buckets, where every packet captured before W is in a batch
// handed to the publisher before it. The publisher keeps each subject's
// messages in order (retries included), so on the stream a bucket's
// watermark follows every batch with an earlier packet; the enricher moves
// the bucket's flow clock to W instead of guessing from its own wall clock,
// and batches held up by a broker failover still join their flows.
//
// Each capture loop (one per fanout socket) reports its clock after
// flushing its open batches; W is the minimum over the loops, so it waits
// for the slowest. Watermarks are sent only while the sensor saw a packet
// within Active (the longest flow timeout, so that idle flows can end);
// a quiet sensor sends none. Files get none: their end-of-input markers end
// their flows, and their packet times may go backwards across interfaces.
type Watermarks struct {
	// Interval between watermarks of a loop (and of the sensor); set before use.
	Interval time.Duration
	// Active is how long after the sensor's last packet watermarks go on.
	Active time.Duration

	b      *Batcher // the root batcher: sensor, boot, subjects, sequence, publisher
	mu     sync.Mutex
	clocks []int64     // per loop: every packet it read before it is handed to the publisher (0: none yet)
	next   []time.Time // per loop: wall time of its next report
	sent   int64       // the last watermark sent
	last   int64       // packet time of the newest packet any loop reported
}

// NewWatermarks returns the watermarks of the loops sharing b (b and its
// forks), loops ≥ 1, every interval, for active after the last packet.
func NewWatermarks(b *Batcher, loops int, interval, active time.Duration) *Watermarks {
	return &Watermarks{Interval: interval, Active: active, b: b, clocks: make([]int64, loops), next: make([]time.Time, loops)}
}

// DefaultWatermarkInterval is the agent's -watermark.interval default: a
// flow ends at most this long after its idle timeout has passed.
const DefaultWatermarkInterval = time.Second

// DefaultWatermarkActive is how long watermarks go on after the last packet:
// the longest default idle timeout (TCP, 5 min) plus the enricher's close
// linger and a margin.
const DefaultWatermarkActive = 6 * time.Minute

// margin is subtracted from a loop's clock: a packet stamped before an empty
// read may still sit in a capture block the kernel has not handed over
// (libpcap's TPACKET_V3 block timeout is its 100 ms read timeout; a
// straggler 24 ms behind a 50 ms margin was seen on a veth at load 10),
// and packets stamped on different CPUs reach one ring slightly out of
// order. Flows end this much later; a packet later than it still joins its
// flow while the flow's idle timeout or close linger has not passed.
const margin = 500 * time.Millisecond

// Tick is called by capture loop i, on its own goroutine, with its batcher
// b (the root batcher or its fork), the wall time now, the time of the
// newest packet it read (Unix ns, 0 for none) and whether its last read
// found the capture empty at now. When the loop's interval has passed it
// sends b's open batches, reports its clock and, when every loop's clock
// has moved past the last watermark, sends the new one. A nil w does
// nothing.
func (w *Watermarks) Tick(i int, b *Batcher, now time.Time, lastPkt int64, idle bool) {
	if w == nil || now.Before(w.next[i]) {
		return
	}
	b.FlushAll()
	clock := lastPkt
	if idle {
		clock = max(clock, now.UnixNano())
	}
	if clock != 0 {
		clock -= int64(margin)
	}
	w.mu.Lock()
	w.next[i] = now.Add(w.Interval)
	w.clocks[i] = max(w.clocks[i], clock)
	w.last = max(w.last, lastPkt)
	wm := w.clocks[0]
	for _, c := range w.clocks {
		wm = min(wm, c)
	}
	if wm <= w.sent || w.last == 0 || time.Duration(wm-w.last) > w.Active || w.full() {
		w.mu.Unlock()
		return
	}
	w.sent = wm
	w.mu.Unlock()
	w.b.wmark.Store(wm)
	w.send(wm, now)
}

// full says whether a live publisher's buffer is nearly full: the round is
// skipped (a later watermark covers it) rather than wait for room, which
// would stall the capture loop.
func (w *Watermarks) full() bool {
	p := w.b.pub
	return p.DropWhenFull && p.MaxBytes > 0 && p.Buffered() > p.MaxBytes/10*9
}

// Final sends the last watermark, marked final_watermark, on every bucket
// after the capture stopped and every batch was acked (a clean stop): the
// enricher ends the sensor's idle flows by its wall clock from then on
// instead of waiting for its watermark silence. Every loop has stopped and
// every packet is in an acked batch, so the watermark is the newest of the
// loops' clocks, the newest packet and now. A nil w does nothing.
func (w *Watermarks) Final(now time.Time) {
	if w == nil {
		return
	}
	w.mu.Lock()
	wm := max(w.sent, w.last, now.UnixNano())
	for _, c := range w.clocks {
		wm = max(wm, c)
	}
	if w.last == 0 {
		w.mu.Unlock()
		return // no packet: no flow to end
	}
	w.mu.Unlock()
	w.b.wmark.Store(wm)
	w.sendFinal(wm, now, true)
}

// send publishes watermark wm on every bucket of the sensor.
func (w *Watermarks) send(wm int64, now time.Time) { w.sendFinal(wm, now, false) }

func (w *Watermarks) sendFinal(wm int64, now time.Time, final bool) {
	b := w.b
	for i := uint32(0); i < schema.Buckets; i++ {
		seq := b.seq.Add(1)
		m := pb.PacketBatch{Sensor: b.sensor, Boot: b.boot, Seq: seq, Bucket: i, SentNs: now.UnixNano(), WatermarkNs: wm,
			FinalWatermark: final}
		data, err := proto.Marshal(&m)
		if err != nil { // cannot happen for a well-formed message
			continue
		}
		b.pub.Publish(b.subjects[i], schema.PacketBatchID(b.sensor, b.boot, seq), data)
	}
}
