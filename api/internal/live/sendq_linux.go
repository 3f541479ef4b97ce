package live

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// measureSendQueue reads a TCP socket's send queue: the bytes written but
// not yet acknowledged by the peer (ioctl SIOCOUTQ, tcp(7): "the amount of
// unsent data in the socket send queue", on Linux write_seq − snd_una, so
// unacknowledged bytes in flight included) and its send buffer size
// (SO_SNDBUF as the kernel reports it: what it accounts writes against,
// grown by TCP autotuning up to net.ipv4.tcp_wmem's maximum). ok is false
// when the socket cannot tell (not TCP, closed).
func measureSendQueue(rc syscall.RawConn) (queued, sndbuf int, ok bool) {
	var qerr, berr error
	err := rc.Control(func(fd uintptr) {
		queued, qerr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
		sndbuf, berr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
	})
	return queued, sndbuf, err == nil && qerr == nil && berr == nil && sndbuf > 0
}
