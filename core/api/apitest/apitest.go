// Package apitest holds the service's API to docs/openapi.yaml in tests:
// a transport that checks every answer a test gets (its status, headers
// and body) against the file, so that an answer the file does not
// describe, a field added without it say, fails the test.
package apitest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// SpecPath is docs/openapi.yaml in this checkout.
func SpecPath() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "docs", "openapi.yaml")
}

type spec struct {
	doc    *openapi3.T
	router routers.Router
}

var load = sync.OnceValues(func() (*spec, error) {
	// The pages are text; their content is checked by the tests that
	// load them.
	openapi3filter.RegisterBodyDecoder("text/html", openapi3filter.PlainBodyDecoder)
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(SpecPath())
	if err != nil {
		return nil, err
	}
	if err := doc.Validate(loader.Context); err != nil {
		return nil, err
	}
	// The tests' servers listen on ports of their own.
	doc.Servers = nil
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, err
	}
	return &spec{doc: doc, router: router}, nil
})

// Client is an HTTP client whose every answer is checked against the
// spec; a disagreement fails t.
func Client(t testing.TB) *http.Client {
	return &http.Client{Transport: Transport(t, http.DefaultTransport)}
}

// Transport wraps base: each answer it brings is checked against the
// spec, and t fails where they disagree.
func Transport(t testing.TB, base http.RoundTripper) http.RoundTripper {
	return roundTripper(func(req *http.Request) (*http.Response, error) {
		resp, err := base.RoundTrip(req)
		if err != nil {
			return resp, err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(body))
		if err != nil {
			return resp, nil // the caller meets the same error reading it
		}
		if err := Check(req, resp.StatusCode, resp.Header, body); err != nil {
			t.Errorf("%s %s answered %d against docs/openapi.yaml: %v\nbody: %.2000s", req.Method, req.URL.Path, resp.StatusCode, err, body)
		}
		return resp, nil
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// Check validates one answer to req against the spec. An answer to a
// path the spec does not have must be the Error shape with 404 or 405.
func Check(req *http.Request, status int, header http.Header, body []byte) error {
	sp, err := load()
	if err != nil {
		return err
	}
	route, params, err := sp.router.FindRoute(req)
	if err != nil {
		if status != http.StatusNotFound && status != http.StatusMethodNotAllowed {
			return err
		}
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			return errors.Join(errors.New("not the Error shape"), err)
		}
		return sp.doc.Components.Schemas["Error"].Value.VisitJSON(v)
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 status,
		Header:                 header,
		Body:                   io.NopCloser(bytes.NewReader(body)),
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	return openapi3filter.ValidateResponse(context.Background(), in)
}
