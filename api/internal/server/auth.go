package server

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"github.com/gorilla/websocket"
	"net/http"
	"os"
	"strings"

	"netwatch/api/internal/rest"
)

// Token is one bearer token the api accepts.
type Token struct {
	Name   string // who it is, recorded as status_by when it changes an alert; "" unnamed
	Secret string
	Admin  bool // may acknowledge and close alerts; read tokens may only read
}

// ParseTokens reads a comma-separated list of "name=secret" or "secret"
// entries (the -auth.read-tokens and -auth.admin-tokens flags).
func ParseTokens(list string, admin bool) ([]Token, error) {
	var out []Token
	for _, e := range strings.Split(list, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		t := Token{Secret: e, Admin: admin}
		if name, secret, ok := strings.Cut(e, "="); ok {
			t.Name, t.Secret = strings.TrimSpace(name), strings.TrimSpace(secret)
		}
		if len(t.Secret) < 16 {
			return nil, fmt.Errorf("token %q: want at least 16 characters", redact(t.Secret))
		}
		out = append(out, t)
	}
	return out, nil
}

// ReadTokenFile reads tokens from a file, one a line: "read|admin name
// secret"; blank lines and lines starting with # are skipped.
func ReadTokenFile(path string) ([]Token, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []Token
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "read" && f[0] != "admin" {
			return nil, fmt.Errorf("%s:%d: want \"read|admin name secret\"", path, i+1)
		}
		ts, err := ParseTokens(f[1]+"="+f[2], f[0] == "admin")
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, i+1, err)
		}
		out = append(out, ts...)
	}
	return out, nil
}

func redact(s string) string {
	if len(s) <= 4 {
		return "****"
	}
	return s[:2] + "…"
}

// public paths need no token: the dashboard's files (it asks for a token
// itself), the OpenAPI document and docs page, and the operational
// endpoints (/metrics, /healthz, /readyz are for the local scraper and
// orchestrator).
func public(path string) bool {
	switch path {
	case "/api/openapi.json", "/api/v1/openapi.json", "/api/docs":
		return true
	}
	return !strings.HasPrefix(path, "/api/")
}

// authenticate wraps next with bearer-token checks (RFC 6750): with tokens
// configured, every /api/ request but the public ones needs one, in an
// "Authorization: Bearer <token>" header or, for WebSocket upgrades that
// browsers cannot give headers, a token query parameter; admin routes need
// an admin token. 401 without a valid token, 403 for a read token on an
// admin route. With no token configured it passes everything (the api then
// listens on loopback only: see cmd/api).
func authenticate(next http.Handler, tokens []Token, admin func(*http.Request) bool) http.Handler {
	if len(tokens) == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if public(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		secret, err := bearer(r)
		var tok *Token
		if err == nil {
			for i := range tokens {
				if subtle.ConstantTimeCompare([]byte(tokens[i].Secret), []byte(secret)) == 1 {
					tok = &tokens[i]
				}
			}
			if tok == nil {
				err = errors.New("the token is not valid")
			}
		}
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="netwatch"`)
			rest.WriteError(w, r, http.StatusUnauthorized, err.Error())
			return
		}
		if admin(r) && !tok.Admin {
			w.Header().Set("WWW-Authenticate", `Bearer realm="netwatch", error="insufficient_scope"`)
			rest.WriteError(w, r, http.StatusForbidden, "this needs an admin token; the token given is read-only")
			return
		}
		next.ServeHTTP(w, rest.WithIdentity(r, rest.Identity{Name: tok.Name, Admin: tok.Admin}))
	})
}

func bearer(r *http.Request) (string, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
			return "", errors.New("Authorization: want \"Bearer <token>\"")
		}
		return strings.TrimSpace(tok), nil
	}
	// ?token= only on WebSocket URLs (browsers cannot set headers there);
	// elsewhere a token in the URL would end up in logs and history.
	if t := r.URL.Query().Get("token"); t != "" && websocket.IsWebSocketUpgrade(r) {
		return t, nil
	}
	return "", errors.New("a bearer token is required (Authorization: Bearer <token>, or ?token= on WebSocket URLs)")
}
