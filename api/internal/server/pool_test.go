package server_test

import (
	"context"
	"strings"
	"testing"

	"netwatch/api/internal/server"
	"netwatch/testkit"
)

// TestNewPoolJITOff: the api's sessions run with jit off (SHOW jit), unless
// the database URL asks for it (jit=on), which is kept.
func TestNewPoolJITOff(t *testing.T) {
	dsn := testkit.Postgres(t)
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	for _, c := range []struct{ url, want string }{{dsn, "off"}, {dsn + sep + "jit=on", "on"}} {
		pool, err := server.NewPool(context.Background(), c.url)
		if err != nil {
			t.Fatal(err)
		}
		var got string
		err = pool.QueryRow(t.Context(), "SHOW jit").Scan(&got)
		pool.Close()
		if err != nil || got != c.want {
			t.Errorf("%s: jit %q (%v), want %q", c.url, got, err, c.want)
		}
	}
}
