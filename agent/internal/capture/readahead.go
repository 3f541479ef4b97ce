package capture

import (
	"errors"
	"sync"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// readAheadChunkBytes is the frame data of one read-ahead chunk, and
// readAheadChunks the chunks in flight between the reading goroutine and
// the consumer: 4 × 1 MiB bounds the memory whatever the file size.
const (
	readAheadChunkBytes = 1 << 20
	readAheadChunks     = 4
)

// ReadAhead reads r in its own goroutine, copying frames into chunks of
// about 1 MiB that it hands over a bounded channel, so that file reading
// (record headers, buffered I/O, gzip) runs on another core than decoding
// and publishing. Frames, errors and the end of the file come out of Next
// in the file's order; as with any Source, data is valid until the next
// call. Progress reports the reading goroutine's position, at most a few
// chunks ahead of Next. Close stops the goroutine and closes r.
func ReadAhead(r Reader) Reader {
	ra := &readAhead{r: r, full: make(chan *chunk, readAheadChunks), free: make(chan *chunk, readAheadChunks+1),
		stop: make(chan struct{})}
	for range readAheadChunks + 1 {
		ra.free <- &chunk{data: make([]byte, 0, readAheadChunkBytes)}
	}
	ra.wg.Add(1)
	go ra.fill()
	return ra
}

// errClosed is what Next returns after Close.
var errClosed = errors.New("capture source closed")

type frame struct {
	off, n int
	ci     gopacket.CaptureInfo
	link   layers.LinkType
}

type chunk struct {
	data   []byte
	frames []frame
	err    error // after the frames: io.EOF or a read error
}

type readAhead struct {
	r          Reader
	full, free chan *chunk
	stop       chan struct{}
	wg         sync.WaitGroup
	cur        *chunk
	i          int
	err        error
	closeOnce  sync.Once
	closeError error
}

func (ra *readAhead) fill() {
	defer ra.wg.Done()
	defer close(ra.full)
	for {
		var c *chunk
		select {
		case c = <-ra.free:
		case <-ra.stop:
			return
		}
		c.data, c.frames, c.err = c.data[:0], c.frames[:0], nil
		for len(c.data) < readAheadChunkBytes-65536 && len(c.frames) < 16384 {
			data, ci, link, err := ra.r.Next()
			if err != nil {
				c.err = err
				break
			}
			c.frames = append(c.frames, frame{off: len(c.data), n: len(data), ci: ci, link: link})
			c.data = append(c.data, data...)
		}
		select {
		case ra.full <- c:
		case <-ra.stop:
			return
		}
		if c.err != nil {
			return
		}
	}
}

// Next implements Source.
func (ra *readAhead) Next() ([]byte, gopacket.CaptureInfo, layers.LinkType, error) {
	for {
		if ra.err != nil {
			return nil, gopacket.CaptureInfo{}, 0, ra.err
		}
		if c := ra.cur; c != nil {
			if ra.i < len(c.frames) {
				f := &c.frames[ra.i]
				ra.i++
				return c.data[f.off : f.off+f.n : f.off+f.n], f.ci, f.link, nil
			}
			if c.err != nil {
				ra.err = c.err
				continue
			}
			ra.free <- c
			ra.cur = nil
		}
		c, ok := <-ra.full
		if !ok {
			// only after Close
			ra.err = errClosed
			continue
		}
		ra.cur, ra.i = c, 0
	}
}

// LinkType implements Source.
func (ra *readAhead) LinkType() layers.LinkType { return ra.r.LinkType() }

// Stats implements Source.
func (ra *readAhead) Stats() (uint64, uint64, bool) { return ra.r.Stats() }

// Name implements Source.
func (ra *readAhead) Name() string { return ra.r.Name() }

// Progress implements Reader.
func (ra *readAhead) Progress() (done, total int64) { return ra.r.Progress() }

// Close stops the reading goroutine and closes the underlying reader.
func (ra *readAhead) Close() error {
	ra.closeOnce.Do(func() {
		close(ra.stop)
		ra.wg.Wait()
		ra.closeError = ra.r.Close()
	})
	return ra.closeError
}
