package rest

import (
	_ "embed"
	"net/http"
)

//go:embed openapi.json
var openapiJSON []byte

//go:embed docs.html
var docsHTML []byte

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write(openapiJSON)
}

func serveDocs(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Write(docsHTML)
}
