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
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/core/queue"
	"github.com/sandboxhq/sandbox/core/statedir"
)

// Options configures a Server.
type Options struct {
	// Queue takes the submissions and answers for the tasks, the hosts
	// and this host's VMs; Lifecycle reads the VMs' quarantine for the
	// page and GET /v1/vms.
	Queue     *queue.Queue
	Lifecycle *lifecycle.Manager
	// State, when set, lets GET /v1/vms and the page show who holds each
	// VM's lease, and a VM a dead process left behind.
	State *statedir.Dir
	// Server is the [server] table: the token (required), the bound on
	// uploads, the timeouts and limits, and whether the page is public.
	// Zero limits take config's defaults.
	Server config.Server
	// Events is the engine's stream: the VMs' steps come from it, never
	// from a hypervisor call per view.
	Events *engine.Events
	// Metrics are the server's own collectors (NewMetrics); the queue
	// feeds them its results, and they subscribe to Events.
	Metrics *Metrics
	// Logger takes the failures a client cannot be told all of (a
	// download cut midway) and the service's own errors; nil discards.
	Logger hclog.Logger
}

// Server serves the API, the page and the metrics.
type Server struct {
	opts Options
	log  hclog.Logger
	mux  *http.ServeMux
	// v1 holds the API's routes alone, to tell a wrong method from a
	// wrong path.
	v1 *http.ServeMux
	// ready is set once the queue works.
	ready func() bool
	// unsubscribe ends the metrics' subscription to the events.
	unsubscribe func()
	// uploads holds a token per upload being read.
	uploads chan struct{}
	// session is the page's cookie value, derived from the token.
	session string
}

// New returns a Server. ready reports whether the queue has started.
func New(opts Options, ready func() bool) (*Server, error) {
	if opts.Server.Token == "" {
		return nil, fmt.Errorf("no API token: set [server] token in config.toml or %s (e.g. openssl rand -hex 16)", config.TokenEnv)
	}
	opts.Server = withDefaults(opts.Server)
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics()
	}
	s := &Server{opts: opts, log: opts.Logger, mux: http.NewServeMux(), v1: http.NewServeMux(), ready: ready,
		uploads: make(chan struct{}, opts.Server.MaxUploads), session: sessionValue(opts.Server.Token)}
	opts.Metrics.registry.MustRegister(&stateCollector{s: s})
	s.unsubscribe = opts.Events.Subscribe(opts.Metrics.Observe)
	s.routes()
	return s, nil
}

// withDefaults fills the limits a caller left zero with config's defaults.
func withDefaults(c config.Server) config.Server {
	d := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	d(&c.ReadTimeout, config.DefaultReadTimeout)
	d(&c.UploadTimeout, config.DefaultUploadTimeout)
	d(&c.WriteTimeout, config.DefaultWriteTimeout)
	d(&c.IdleTimeout, config.DefaultIdleTimeout)
	if c.MaxSampleSize <= 0 {
		c.MaxSampleSize = config.DefaultMaxSampleSize
	}
	if c.MaxConnections <= 0 {
		c.MaxConnections = config.DefaultMaxConnections
	}
	if c.MaxUploads <= 0 {
		c.MaxUploads = min(config.DefaultMaxUploads, c.MaxConnections)
	}
	return c
}

// Close ends the server's subscription to the engine's events.
func (s *Server) Close() { s.unsubscribe() }

// Handler returns the server's handler.
func (s *Server) Handler() http.Handler { return s.mux }

// HTTPServer returns an http.Server for Handler with the configured
// timeouts: a client that sends its headers or body too slowly, or
// keeps an idle connection, is cut at read_timeout or idle_timeout, and
// an answer not taken within write_timeout is abandoned. Uploads, long
// operations and downloads move their own deadlines (see submit).
func (s *Server) HTTPServer() *http.Server {
	c := s.opts.Server
	return &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: c.ReadTimeout,
		ReadTimeout:       c.ReadTimeout,
		WriteTimeout:      c.WriteTimeout,
		IdleTimeout:       c.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          s.log.Named("http").StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug}),
	}
}

// Listener bounds ln to max_connections connections at once: the others
// wait in the kernel's backlog, holding no file of this process, so that
// clients can never starve the running tasks of the files they need.
func (s *Server) Listener(ln net.Listener) net.Listener {
	return netutil.LimitListener(ln, s.opts.Server.MaxConnections)
}

// v1Routes are the API's endpoints; docs/openapi.yaml describes each (a
// test holds them together).
func (s *Server) v1Routes() map[string]func(http.ResponseWriter, *http.Request) error {
	return map[string]func(http.ResponseWriter, *http.Request) error{
		"POST /v1/tasks":                                s.submit,
		"GET /v1/tasks":                                 s.listTasks,
		"GET /v1/tasks/{id}":                            s.getTask,
		"GET /v1/tasks/{id}/report":                     s.getReport,
		"GET /v1/tasks/{id}/artifacts/{profile}/{name}": s.getArtifact,
		"POST /v1/tasks/{id}/cancel":                    s.cancelTask,
		"GET /v1/vms":                                   s.listVMs,
		"POST /v1/vms/{name}/cleanup":                   s.cleanupVM,
		"POST /v1/vms/{name}/reconcile":                 s.reconcileVM,
		"GET /v1/profiles":                              s.listProfiles,
		"GET /v1/hosts":                                 s.listHosts,
	}
}

func (s *Server) routes() {
	for pattern, h := range s.v1Routes() {
		s.mux.Handle(pattern, s.auth(h))
		s.v1.Handle(pattern, http.NotFoundHandler())
	}
	s.mux.HandleFunc("/v1/", s.noRoute)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.opts.Metrics.registry, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.pageRoutes()
}

// noRoute answers a /v1 request no route takes: 405 with Allow when the
// path is an endpoint's and only the method is wrong, else 404.
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := s.v1.Handler(probe); pattern != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed",
			fmt.Sprintf("%s does not take %s; it takes %s (see docs/api.md)", r.URL.Path, r.Method, strings.Join(allow, ", ")))
		return
	}
	writeError(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.Method+" "+r.URL.Path+"; see docs/api.md")
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

// bearer reports whether r carries the token: "Authorization: Bearer
// TOKEN", the scheme in any case (RFC 9110 makes it case-insensitive).
func (s *Server) bearer(r *http.Request) bool {
	scheme, got, ok := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	return ok && strings.EqualFold(scheme, "Bearer") &&
		subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(s.opts.Server.Token)) == 1
}

// unauthorized refuses a request without the token. It does not wait
// for the body: the connection is closed after the answer instead of
// being drained for the next request, so that a client without the token
// cannot hold it by sending a body slowly.
func unauthorized(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="sandbox"`)
	if r.ContentLength != 0 {
		refuseBody(w)
	}
	writeError(w, http.StatusUnauthorized, "unauthorized",
		"missing or wrong bearer token: send the service's token, [server] token or SANDBOX_API_TOKEN, as \"Authorization: Bearer TOKEN\"")
}

// refuseBody closes the connection after the answer without reading what
// is left of the request's body: net/http would otherwise read up to
// 256 KiB of it, as slowly as the client sends it, to keep the
// connection for another request.
func refuseBody(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	_ = http.NewResponseController(w).SetReadDeadline(time.Now())
}

// statusClientClosed is the status logged for a request whose client
// left before its answer (no standard one exists; proxies use 499).
const statusClientClosed = 499

// auth checks the bearer token, then runs h and renders its error.
func (s *Server) auth(h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.bearer(r) {
			unauthorized(w, r)
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
		case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
			// The request's own context ends when its connection does:
			// nobody reads this answer, the log says what happened.
			s.log.Info("request abandoned: the client's connection closed before the answer", "method", r.Method, "path", r.URL.Path)
			writeError(w, statusClientClosed, "cancelled", "the connection closed before the answer was ready")
		case errors.Is(err, context.Canceled):
			writeError(w, http.StatusServiceUnavailable, "unavailable",
				"the service is stopping: try again once it is back, or on another host sharing the queue")
		default:
			if why, away := s.databaseAway(err); away {
				s.log.Warn("request refused: the queue's database is away", "method", r.Method, "path", r.URL.Path, "error", err)
				writeError(w, http.StatusServiceUnavailable, "unavailable", why)
				return
			}
			s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
			writeError(w, http.StatusInternalServerError, "internal", err.Error()+" (the service's log has it too)")
		}
	})
}

// databaseAway tells a failure of the queue's database (PostgreSQL
// restarting or out of reach, the SQLite file deleted under the service)
// from a fault of the service, so that a client hears that it may try
// again, and when, rather than a bare 500. A request that failed so
// changed nothing: each is one transaction.
func (s *Server) databaseAway(err error) (string, bool) {
	if errors.Is(err, queue.ErrDatabaseLost) {
		return err.Error(), true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if perr := s.opts.Queue.Ping(ctx); perr != nil {
		return fmt.Sprintf("the queue's database does not answer (%v): nothing was stored or changed; "+
			"try again once GET /readyz answers ready", perr), true
	}
	return "", false
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
