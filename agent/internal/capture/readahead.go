package capture

import (
	"errors"
	"io"
	"os"
	"sync"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// prefetchBlocks is the number of blocks in flight between the reading
// goroutine and the consumer, of prefetchBlockBytes each: 8 × 256 KiB
// bounds the memory whatever the file size.
const prefetchBlocks = 8

// prefetchBlockBytes is a variable only so that tests can make records
// straddle blocks often.
var prefetchBlockBytes = 256 << 10

// errClosed is what Next returns after Interrupt or Close.
var errClosed = errors.New("capture source closed")

// ReadAhead reads r's files in their own goroutine, ahead of the consumer:
// the file's bytes (decompressed, for gzip) come in blocks of up to
// 256 KiB over a bounded channel, so that the system calls, the copies out
// of the page cache and gzip run on another core than decoding and
// publishing, while the records are cut out of those bytes, without
// copying, by the consumer's Next. Frames, errors and the end of the file
// come out of Next as they do from r. The result is an Interrupter:
// Interrupt may be called from any goroutine, also while Next waits for a
// slow pipe, and Next then returns an error at once (the reading goroutine
// ends when its read returns, at the latest at Close). r must be a *File or
// a *Dir from Open; another Reader is returned unchanged.
func ReadAhead(r Reader) Reader {
	ra := &readAhead{Reader: r, stop: make(chan struct{})}
	switch s := r.(type) {
	case *File:
		s.prefetch(ra.stop)
	case *Dir:
		s.prefetch(ra.stop)
	default:
		return r
	}
	return ra
}

// readAhead is a Reader whose files are prefetched; Interrupt stops it.
type readAhead struct {
	Reader
	stop       chan struct{}
	stopOnce   sync.Once
	closeOnce  sync.Once
	closeError error
}

// Interrupter is a Source whose Next can be made to return at once, from
// another goroutine, also while it waits for a slow pipe.
type Interrupter interface {
	// Interrupt makes Next return errClosed from now on; Close still
	// releases the source.
	Interrupt()
}

// Waiter is a Source that can tell when Next is about to wait for data.
type Waiter interface {
	// OnWait sets f, called by Next, in Next's goroutine, each time it is
	// about to wait for the reading goroutine (a slow pipe, or a reader
	// behind the consumer): the moment to flush counters and old batches.
	OnWait(f func())
}

// OnWait implements Waiter.
func (ra *readAhead) OnWait(f func()) {
	switch s := ra.Reader.(type) {
	case *File:
		s.onWait(f)
	case *Dir:
		s.wait = f
		s.cur.onWait(f)
	}
}

// Next implements Source.
func (ra *readAhead) Next() ([]byte, gopacket.CaptureInfo, layers.LinkType, error) {
	data, ci, link, err := ra.Reader.Next()
	if err != nil {
		select {
		case <-ra.stop:
			err = errClosed
		default:
		}
	}
	return data, ci, link, err
}

// NextFrame implements FrameSource.
func (ra *readAhead) NextFrame(f *Frame) error {
	err := ra.Reader.(FrameSource).NextFrame(f)
	if err != nil {
		select {
		case <-ra.stop:
			err = errClosed
		default:
		}
	}
	return err
}

// Interrupt implements Interrupter: the reading goroutine stops (once its
// read returns) and Next returns errClosed. Safe from any goroutine.
func (ra *readAhead) Interrupt() { ra.stopOnce.Do(func() { close(ra.stop) }) }

// Close stops the reading goroutine and closes the underlying reader (which
// ends a read that waits on a pipe). Call it from the goroutine that calls
// Next, once Next no longer runs; Interrupt is for other goroutines.
func (ra *readAhead) Close() error {
	ra.closeOnce.Do(func() {
		ra.Interrupt()
		ra.closeError = ra.Reader.Close()
	})
	return ra.closeError
}

// prefetcher is an io.Reader whose source is read by its own goroutine in
// blocks, ahead of the consumer's Read.
type prefetcher struct {
	full, free chan *block
	stop       <-chan struct{}
	cur        *block
	pos        int
	onWait     func() // called before waiting for a block; nil for none
}

type block struct {
	b     []byte
	err   error // after b: the source's io.EOF or read error
	spare bool  // not one of the goroutine's blocks: dropped once read
}

// newPrefetcher starts reading src. A pipe (or a terminal or socket) is
// handed over as it arrives, one read per block, so that a slow writer's
// frames are not held back until a block fills; a regular file fills
// blocks. Reading stops at src's first error or when stop closes.
func newPrefetcher(src io.Reader, pipe bool, stop <-chan struct{}) *prefetcher {
	p := &prefetcher{full: make(chan *block, prefetchBlocks), free: make(chan *block, prefetchBlocks+1), stop: stop}
	for range prefetchBlocks + 1 {
		p.free <- &block{b: make([]byte, 0, prefetchBlockBytes)}
	}
	go p.fill(src, pipe)
	return p
}

func (p *prefetcher) fill(src io.Reader, pipe bool) {
	for {
		var bl *block
		select {
		case bl = <-p.free:
		case <-p.stop:
			return
		}
		b := bl.b[:cap(bl.b)]
		n := 0
		var err error
		for n < (len(b)+1)/2 && err == nil {
			var m int
			m, err = src.Read(b[n:])
			n += m
			if pipe && n > 0 {
				break
			}
		}
		bl.b, bl.err = b[:n], err
		select {
		case p.full <- bl:
		case <-p.stop:
			return
		}
		if err != nil {
			return
		}
	}
}

// avail returns the unread bytes of the current block, moving to the next
// block when it is used up (the used one goes back to the goroutine); at
// the end it returns no bytes and the source's error, or errClosed once
// stop is closed. The consumer marks bytes read by advancing pos.
func (p *prefetcher) avail() ([]byte, error) {
	for p.cur == nil || p.pos == len(p.cur.b) {
		if p.cur != nil {
			if p.cur.err != nil {
				return nil, p.cur.err
			}
			if !p.cur.spare {
				p.free <- p.cur
			}
			p.cur = nil
		}
		select {
		case bl := <-p.full:
			p.cur, p.pos = bl, 0
			continue
		default:
		}
		if p.onWait != nil {
			p.onWait()
		}
		select {
		case bl := <-p.full:
			p.cur, p.pos = bl, 0
		case <-p.stop:
			return nil, errClosed
		}
	}
	return p.cur.b[p.pos:], nil
}

// Read implements io.Reader: the prefetched bytes in order, then the
// source's error; errClosed once stop is closed and nothing is at hand.
func (p *prefetcher) Read(b []byte) (int, error) {
	a, err := p.avail()
	if len(a) == 0 {
		return 0, err
	}
	n := copy(b, a)
	p.pos += n
	return n, nil
}

// isPipe reports whether f is read as a stream that may stall (a pipe,
// FIFO, terminal or socket) rather than a regular file.
func isPipe(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && !st.Mode().IsRegular()
}
