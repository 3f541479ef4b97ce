//go:build !linux

package live

import "syscall"

// measureSendQueue is Linux-only (SIOCOUTQ); elsewhere a client's send
// queue is not watched and only the write deadline bounds a stalled client.
func measureSendQueue(syscall.RawConn) (queued, sndbuf int, ok bool) { return 0, 0, false }
