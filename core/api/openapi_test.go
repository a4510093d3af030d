package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sandboxhq/sandbox/core/api/apitest"
)

// docs/openapi.yaml is valid OpenAPI, and it and the server's routes
// describe the same endpoints: each route and method is in the file, and
// each path and method of the file is a route.
func TestTheOpenAPIFileIsValidAndMatchesTheRoutes(t *testing.T) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(apitest.SpecPath())
	require.NoError(t, err)
	require.NoError(t, doc.Validate(loader.Context), "docs/openapi.yaml is not valid OpenAPI")

	s := &Server{mux: http.NewServeMux(), v1: http.NewServeMux(), opts: Options{Metrics: NewMetrics()}}
	s.routes()
	for pattern := range s.v1Routes() {
		method, path, _ := strings.Cut(pattern, " ")
		item := doc.Paths.Value(path)
		require.NotNil(t, item, "docs/openapi.yaml has no path %s", path)
		assert.NotNil(t, item.GetOperation(method), "docs/openapi.yaml has no %s", pattern)
	}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			concrete := strings.NewReplacer("{id}", "x", "{name}", "x").Replace(path)
			_, pattern := s.mux.Handler(httptest.NewRequest(method, concrete, nil))
			assert.NotEmpty(t, pattern, "docs/openapi.yaml describes %s %s, which the server does not serve", method, path)
			assert.NotEqual(t, "/v1/", pattern, "docs/openapi.yaml describes %s %s, which the server does not serve", method, path)
		}
	}
}
