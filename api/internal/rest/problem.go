package rest

import (
	"encoding/json"
	"net/http"
	"strings"
)

// Problem is an RFC 9457 problem details object, the body of every error
// response (Content-Type application/problem+json).
type Problem struct {
	Type   string `json:"type"`   // a URI naming the kind of problem (ProblemType*)
	Title  string `json:"title"`  // short summary of the type
	Status int    `json:"status"` // the HTTP status code
	Detail string `json:"detail"` // what was wrong with this request, e.g. which parameter
	// Instance is the request path the problem occurred on.
	Instance string `json:"instance,omitempty"`
}

// Problem types (RFC 9457 §3.1.1: a URI; these are tag URIs of netwatch's
// own, not dereferenceable).
const (
	ProblemBadParameter     = "tag:netwatch,2026:problem/bad-parameter"
	ProblemNotFound         = "tag:netwatch,2026:problem/not-found"
	ProblemMethodNotAllowed = "tag:netwatch,2026:problem/method-not-allowed"
	ProblemUnauthorized     = "tag:netwatch,2026:problem/unauthorized"
	ProblemForbidden        = "tag:netwatch,2026:problem/forbidden"
	ProblemConflict         = "tag:netwatch,2026:problem/conflict"
	ProblemUnavailable      = "tag:netwatch,2026:problem/unavailable"
	ProblemTimeout          = "tag:netwatch,2026:problem/timeout"
	ProblemInternal         = "tag:netwatch,2026:problem/internal"
)

// problemTypes maps a status code to its problem type and title.
var problemTypes = map[int][2]string{
	http.StatusBadRequest:            {ProblemBadParameter, "Bad request parameter"},
	http.StatusUnauthorized:          {ProblemUnauthorized, "Authentication required"},
	http.StatusForbidden:             {ProblemForbidden, "Not allowed for this token"},
	http.StatusNotFound:              {ProblemNotFound, "Not found"},
	http.StatusMethodNotAllowed:      {ProblemMethodNotAllowed, "Method not allowed"},
	http.StatusConflict:              {ProblemConflict, "Conflict"},
	http.StatusRequestEntityTooLarge: {ProblemBadParameter, "Request body too large"},
	http.StatusUnsupportedMediaType:  {ProblemBadParameter, "Unsupported media type"},
	http.StatusServiceUnavailable:    {ProblemUnavailable, "Service unavailable"},
	http.StatusGatewayTimeout:        {ProblemTimeout, "Database query timed out"},
}

// WriteError writes an RFC 9457 problem with status code and detail msg
// for the request r (its path is the problem's instance); the type and
// title follow from the code.
func WriteError(w http.ResponseWriter, r *http.Request, code int, msg string) {
	writeProblem(w, r, code, msg)
}

func writeProblem(w http.ResponseWriter, r *http.Request, code int, msg string) {
	p := Problem{Type: ProblemInternal, Title: http.StatusText(code), Status: code, Detail: msg}
	if t, ok := problemTypes[code]; ok {
		p.Type, p.Title = t[0], t[1]
	}
	if r != nil {
		p.Instance = r.URL.EscapedPath() // a URI reference (RFC 9457 §3.1.5): escaped
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(p)
}

// methods a route of the api may have; unmatched answers 405 when the path
// exists with one of them.
var methods = []string{http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodPut, http.MethodDelete}

// unmatched answers a request under /api/ that no route took: 405 with an
// Allow header when the path exists for other methods, else 404.
func unmatched(mux *http.ServeMux) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var allow []string
		for _, m := range methods {
			if m == r.Method {
				continue
			}
			rr := r.Clone(r.Context())
			rr.Method = m
			if _, pat := mux.Handler(rr); pat != "" && pat != "/api/" && pat != "/" {
				allow = append(allow, m)
			}
		}
		if len(allow) > 0 {
			if contains(allow, http.MethodGet) {
				allow = append(allow, http.MethodHead)
			}
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeProblem(w, r, http.StatusMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path+" (allowed: "+strings.Join(allow, ", ")+")")
			return
		}
		writeProblem(w, r, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	}
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}
