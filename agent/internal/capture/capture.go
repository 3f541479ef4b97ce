// Package capture is the first stage of the agent (capture → decode →
// fragment → publish): it reads frames from a pcap or pcapng file (pure Go,
// gopacket/pcapgo, tracking the byte offset of every record) or live from an
// interface through libpcap.
package capture

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// ErrTimeout is returned by a live Source's Next when no packet arrived
// within the read timeout; the caller may flush and call Next again.
var ErrTimeout = errors.New("capture read timeout")

// Source is a stream of captured frames.
type Source interface {
	// Next returns the next frame and its link type. data is valid until the
	// next call. At the end of a file it returns io.EOF; a corrupt or
	// truncated file gives a *ReadError.
	Next() (data []byte, ci gopacket.CaptureInfo, link layers.LinkType, err error)
	// LinkType is the link type of the capture (of a pcapng file's first interface).
	LinkType() layers.LinkType
	// Stats returns libpcap's counters of a live capture; ok is false for files.
	Stats() (dropped, ifDropped uint64, ok bool)
	// Name is the file path or interface name.
	Name() string
	Close() error
}

// ReadError is a failure to read a record of a capture file.
type ReadError struct {
	Path   string
	Packet uint64 // 1-based number of the record that failed
	Offset int64  // byte offset in the file where that record starts
	Err    error
}

func (e *ReadError) Error() string {
	return fmt.Sprintf("read %s: packet %d at byte offset %d: %v", e.Path, e.Packet, e.Offset, e.Err)
}

func (e *ReadError) Unwrap() error { return e.Err }

// countingReader counts the bytes handed to the bufio.Reader above it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type packetReader interface {
	ZeroCopyReadPacketData() ([]byte, gopacket.CaptureInfo, error)
}

// File reads a pcap (µs or ns, either byte order) or pcapng file (several
// interfaces, each with its own link type and time resolution).
type File struct {
	path string
	f    *os.File
	cr   *countingReader
	br   *bufio.Reader
	r    packetReader
	ng   bool
	link layers.LinkType
	n    uint64 // records read
}

// OpenFile opens a capture file and reads its header. The format comes from
// the magic number, not the file name.
func OpenFile(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open capture: %w", err)
	}
	cr := &countingReader{r: f}
	// pcapgo wraps its input in bufio.NewReader, which returns this reader
	// unchanged, so counted minus buffered is the exact file offset.
	br := bufio.NewReaderSize(cr, 1<<20)
	c := &File{path: path, f: f, cr: cr, br: br}
	magic, err := br.Peek(4)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read %s: file header: %w", path, noEOF(err))
	}
	if binary.LittleEndian.Uint32(magic) == 0x0a0d0d0a {
		ng, err := pcapgo.NewNgReader(br, pcapgo.NgReaderOptions{WantMixedLinkType: true})
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("read %s: pcapng header: %w", path, noEOF(err))
		}
		c.r, c.ng, c.link = ng, true, ng.LinkType()
	} else {
		r, err := pcapgo.NewReader(br)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("read %s: pcap header: %w", path, noEOF(err))
		}
		c.r, c.link = r, r.LinkType()
	}
	return c, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Offset is the byte offset of the next unread record (for pcapng, of the
// next block).
func (c *File) Offset() int64 { return c.cr.n - int64(c.br.Buffered()) }

// Next implements Source.
func (c *File) Next() ([]byte, gopacket.CaptureInfo, layers.LinkType, error) {
	off := c.Offset()
	data, ci, err := c.r.ZeroCopyReadPacketData()
	if err != nil {
		// pcapgo returns io.EOF only when a block or record header starts at
		// the end of the file (after any trailing statistics blocks); a cut
		// record is io.ErrUnexpectedEOF.
		if err == io.EOF {
			return nil, ci, 0, io.EOF
		}
		return nil, ci, 0, &ReadError{Path: c.path, Packet: c.n + 1, Offset: off, Err: err}
	}
	c.n++
	link := c.link
	if c.ng && len(ci.AncillaryData) > 0 {
		if l, ok := ci.AncillaryData[0].(layers.LinkType); ok {
			link = l
		}
	}
	return data, ci, link, nil
}

// Packets is the number of records read so far.
func (c *File) Packets() uint64 { return c.n }

// LinkType implements Source.
func (c *File) LinkType() layers.LinkType { return c.link }

// Stats implements Source: a file has none.
func (c *File) Stats() (uint64, uint64, bool) { return 0, 0, false }

// Name implements Source.
func (c *File) Name() string { return c.path }

// Close implements Source.
func (c *File) Close() error { return c.f.Close() }

// Pacer sleeps so that frames are released at their recorded pace times
// speed (1 = recorded pace). The zero value with Speed 0 never sleeps.
type Pacer struct {
	Speed     float64
	first     time.Time
	firstWall time.Time
	started   bool
}

// Wait blocks until the frame recorded at ts is due, or done closes.
func (p *Pacer) Wait(ts time.Time, done <-chan struct{}) {
	if p.Speed <= 0 {
		return
	}
	if !p.started {
		p.first, p.firstWall, p.started = ts, time.Now(), true
		return
	}
	due := p.firstWall.Add(time.Duration(float64(ts.Sub(p.first)) / p.Speed))
	if d := time.Until(due); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-done:
		}
	}
}
