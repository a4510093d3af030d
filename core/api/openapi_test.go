package api

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEveryRouteIsInTheOpenAPIFile keeps docs/openapi.yaml and the
// server's routes together: each endpoint and method is described.
func TestEveryRouteIsInTheOpenAPIFile(t *testing.T) {
	data, err := os.ReadFile("../../docs/openapi.yaml")
	require.NoError(t, err)
	doc := string(data)
	s := &Server{}
	for pattern := range s.v1Routes() {
		method, path, _ := strings.Cut(pattern, " ")
		i := strings.Index(doc, "\n  "+path+":\n")
		require.GreaterOrEqual(t, i, 0, "docs/openapi.yaml has no path %s", path)
		section := doc[i+len(path)+4:] // from the newline that ends the path's line
		if j := strings.Index(section, "\n  /"); j >= 0 {
			section = section[:j]
		}
		assert.Contains(t, section, "\n    "+strings.ToLower(method)+":", "docs/openapi.yaml has no %s", pattern)
	}
	for _, path := range []string{"/metrics", "/healthz", "/readyz", "/"} {
		assert.Contains(t, doc, "\n  "+path+":\n")
	}
}
