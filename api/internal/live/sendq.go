package live

import (
	"net"
	"syscall"
)

// frameOverhead bounds the bytes a server frame adds to its payload: a
// WebSocket header is at most 10 bytes unmasked (RFC 6455, section 5.2).
const frameOverhead = 10

// sendWindow keeps a live client's data frames from filling its socket.
// A client that stops reading stops acknowledging, so its connection's
// send queue grows until the kernel's send buffer is full, and from then
// on every write blocks: nothing, not even a report of what it missed or a
// close frame, can reach it. The writer therefore sends a data frame only
// while the bytes written but not yet acknowledged (SIOCOUTQ), plus the
// frame, stay within half the socket's send buffer (SO_SNDBUF, which TCP
// autotuning grows with the connection's bandwidth-delay product); the
// other half stays free for the drop reports, pings and the close frame.
// A frame of any size goes out when the queue is empty (the peer has
// acknowledged everything), so a message larger than the bound is not
// stuck behind it.
//
// Measuring costs two system calls, so it is done only when the frames
// written since the last measurement may have used up the room it found
// (acknowledgements only ever add room). The zero value (no socket to
// measure: not TCP, not Linux) lets every frame through, and only the write
// deadline bounds a client that stopped reading.
type sendWindow struct {
	raw    syscall.RawConn // nil: not measured
	credit int             // bytes that may still be written before measuring again
}

// newSendWindow watches nc's socket when it is a TCP connection (possibly
// under TLS).
func newSendWindow(nc net.Conn) *sendWindow {
	for range 4 { // unwrap e.g. *tls.Conn
		if sc, ok := nc.(interface{ NetConn() net.Conn }); ok {
			nc = sc.NetConn()
		}
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return &sendWindow{}
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return &sendWindow{}
	}
	w := &sendWindow{raw: rc}
	if _, _, ok := measureSendQueue(rc); !ok {
		w.raw = nil
	}
	return w
}

// fits reports whether a frame of n payload bytes may be written now.
func (w *sendWindow) fits(n int) bool {
	n += frameOverhead
	if w.raw == nil || n <= w.credit {
		return true
	}
	queued, sndbuf, ok := measureSendQueue(w.raw)
	if !ok {
		w.credit = 0
		return true // the write itself will tell what is wrong
	}
	if queued == 0 {
		w.credit = max(sndbuf/2, n)
		return true
	}
	w.credit = sndbuf/2 - queued
	return n <= w.credit
}

// room is the payload bytes a frame may have now, after fits said yes.
func (w *sendWindow) room() int {
	if w.raw == nil {
		return maxBatch
	}
	return w.credit - frameOverhead
}

// wrote accounts a frame of n payload bytes written.
func (w *sendWindow) wrote(n int) { w.credit -= n + frameOverhead }
