package server_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"netwatch/api/internal/rest"
)

// TestOpenAPIInSync: every route of the server is in the OpenAPI document
// with its method, every documented path and method is routed, and each
// operation documents exactly the query parameters its handler reads
// (traced through rest.QueryParam) and the path parameters of its pattern.
func TestOpenAPIInSync(t *testing.T) {
	e := newEnv(t)
	b, err := os.ReadFile("../rest/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	type param struct {
		Ref  string `json:"$ref"`
		Name string `json:"name"`
		In   string `json:"in"`
	}
	var doc struct {
		Paths      map[string]map[string]struct{ Parameters []param } `json:"paths"`
		Components struct {
			Parameters map[string]param `json:"parameters"`
		} `json:"components"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	routed := map[string]bool{}
	for _, r := range e.srv.Routes {
		routed[r] = true
		if !documented[r] {
			t.Errorf("route %s is not in openapi.json", r)
		}
	}
	for r := range documented {
		if !routed[r] {
			t.Errorf("openapi.json documents %s, which is not routed", r)
		}
	}
	pathParam := regexp.MustCompile(`\{(\w+)\}`)
	for r := range documented {
		method, path, _ := strings.Cut(r, " ")
		var docQuery, docPath []string
		for _, p := range doc.Paths[path][strings.ToLower(method)].Parameters {
			if p.Ref != "" {
				p = doc.Components.Parameters[strings.TrimPrefix(p.Ref, "#/components/parameters/")]
			}
			switch p.In {
			case "query":
				if p.Name != "token" { // read by the authentication middleware, not the handler
					docQuery = append(docQuery, p.Name)
				}
			case "path":
				docPath = append(docPath, p.Name)
			}
		}
		var patPath []string
		for _, m := range pathParam.FindAllStringSubmatch(path, -1) {
			patPath = append(patPath, m[1])
		}
		sort.Strings(docPath)
		sort.Strings(patPath)
		if !slices.Equal(docPath, patPath) {
			t.Errorf("%s: documented path parameters %v, pattern has %v", r, docPath, patPath)
		}
		// Call it with no parameters (a path parameter "x"): every
		// handler reads all its parameters before it answers.
		req := httptest.NewRequest(method, pathParam.ReplaceAllString(path, "x"), strings.NewReader("{}"))
		req, seen := rest.TraceParams(req)
		w := httptest.NewRecorder()
		e.srv.Handler.ServeHTTP(w, req)
		if w.Code == http.StatusNotFound && !strings.Contains(path, "{") || w.Code == http.StatusMethodNotAllowed || w.Code >= 500 {
			t.Errorf("%s: %d %s", r, w.Code, w.Body.String())
		}
		read := slices.Compact(slices.Sorted(slices.Values(seen())))
		sort.Strings(docQuery)
		if !slices.Equal(read, docQuery) {
			t.Errorf("%s: the handler reads %v, openapi.json documents %v", r, read, docQuery)
		}
	}
}
