// Package api is the HTTP front door of `sandbox serve`: a small JSON API
// under /v1 (submit samples, follow and cancel tasks, list and clean VMs),
// Prometheus metrics, health checks and a status page. Handlers only parse
// requests and render answers; the queue and the lifecycle manager do the
// work. Every /v1 call needs the bearer token; errors are one JSON shape
// with a stable code.
package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/core/queue"
	"github.com/sandboxhq/sandbox/core/statedir"
)

// Options configures a Server.
type Options struct {
	Queue     *queue.Queue
	Lifecycle *lifecycle.Manager
	// State, when set, lets GET /v1/vms show who holds each VM's lease.
	State *statedir.Dir
	// Token is the bearer token; required.
	Token string
	// MaxSampleSize bounds an upload; 0 means config.DefaultMaxSampleSize.
	MaxSampleSize int64
	// Events is the engine's stream: the VMs' steps come from it, never
	// from a hypervisor call per view.
	Events *engine.Events
	// Metrics are the server's own collectors (NewMetrics); the queue
	// feeds them its results, and they subscribe to Events.
	Metrics *Metrics
	Logger  hclog.Logger
}

// Server serves the API, the page and the metrics.
type Server struct {
	opts Options
	log  hclog.Logger
	mux  *http.ServeMux
	// ready is set once the queue works.
	ready func() bool
	// unsubscribe ends the metrics' subscription to the events.
	unsubscribe func()
}

// New returns a Server. ready reports whether the queue has started.
func New(opts Options, ready func() bool) (*Server, error) {
	if opts.Token == "" {
		return nil, fmt.Errorf("no API token: set [server] token in config.toml or %s (e.g. openssl rand -hex 16)", config.TokenEnv)
	}
	if opts.MaxSampleSize <= 0 {
		opts.MaxSampleSize = config.DefaultMaxSampleSize
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics()
	}
	s := &Server{opts: opts, log: opts.Logger, mux: http.NewServeMux(), ready: ready}
	opts.Metrics.registry.MustRegister(&stateCollector{s: s})
	s.unsubscribe = opts.Events.Subscribe(opts.Metrics.Observe)
	s.routes()
	return s, nil
}

// Close ends the server's subscription to the engine's events.
func (s *Server) Close() { s.unsubscribe() }

// Handler returns the server's handler.
func (s *Server) Handler() http.Handler { return s.mux }

// v1Routes are the API's endpoints; docs/openapi.yaml describes each (a
// test holds them together).
func (s *Server) v1Routes() map[string]func(http.ResponseWriter, *http.Request) error {
	return map[string]func(http.ResponseWriter, *http.Request) error{
		"POST /v1/tasks":                s.submit,
		"GET /v1/tasks":                 s.listTasks,
		"GET /v1/tasks/{id}":            s.getTask,
		"POST /v1/tasks/{id}/cancel":    s.cancelTask,
		"GET /v1/vms":                   s.listVMs,
		"POST /v1/vms/{name}/cleanup":   s.cleanupVM,
		"POST /v1/vms/{name}/reconcile": s.reconcileVM,
		"GET /v1/profiles":              s.listProfiles,
		"GET /v1/hosts":                 s.listHosts,
	}
}

func (s *Server) routes() {
	for pattern, h := range s.v1Routes() {
		s.mux.Handle(pattern, s.auth(h))
	}
	s.mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.Method+" "+r.URL.Path+"; see docs/api.md")
	})
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.opts.Metrics.registry, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.HandleFunc("GET /{$}", s.page)
}

// apiError is an error with an HTTP status and a stable code.
type apiError struct {
	status int
	code   string
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, code, format string, args ...any) error {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

// errorBody is the one shape of every error answer.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	var b errorBody
	b.Error.Code, b.Error.Message = code, msg
	writeJSON(w, status, b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// auth checks the bearer token, then runs h and renders its error.
func (s *Server) auth(h func(http.ResponseWriter, *http.Request) error) http.Handler {
	want := []byte(s.opts.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sandbox"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "missing or wrong bearer token (Authorization: Bearer TOKEN)")
			return
		}
		err := h(w, r)
		if err == nil {
			return
		}
		var ae *apiError
		var ie *queue.InputError
		switch {
		case errors.As(err, &ae):
			writeError(w, ae.status, ae.code, ae.msg)
		case errors.As(err, &ie):
			status := http.StatusBadRequest
			switch ie.Code {
			case "not_found":
				status = http.StatusNotFound
			case "already_finished":
				status = http.StatusConflict
			}
			writeError(w, status, ie.Code, ie.Msg)
		case errors.Is(err, context.Canceled):
			writeError(w, http.StatusServiceUnavailable, "unavailable", "the service is stopping")
		default:
			s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
			writeError(w, http.StatusInternalServerError, "internal", err.Error())
		}
	})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !s.ready() {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "starting")
		return
	}
	if err := s.opts.Queue.Ping(ctx); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "database:", err)
		return
	}
	fmt.Fprintf(w, "ready (schema %d)\n", s.opts.Queue.Schema())
}
