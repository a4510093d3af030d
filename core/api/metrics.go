package api

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sandboxhq/sandbox/core/engine"
)

// Metrics are the server's Prometheus collectors, on a registry of its
// own (not the global default, so that tests read exactly what it counts).
// The queue feeds them: Observe every task transition, Result every
// analysis recorded.
type Metrics struct {
	registry *prometheus.Registry
	steps    *prometheus.HistogramVec
	results  *prometheus.CounterVec
	cleanups *prometheus.CounterVec
}

// NewMetrics returns the collectors, registered.
func NewMetrics() *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		steps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sandbox_step_duration_seconds",
			Help:    "Time tasks spent in each step of an analysis, by step and profile.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
		}, []string{"step", "profile"}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandbox_analyses_total",
			Help: "Analyses this host recorded, by final state and verdict.",
		}, []string{"state", "verdict"}),
		cleanups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sandbox_cleanups_total",
			Help: "Complete cleanups after a task on this host, by outcome (ok, failed).",
		}, []string{"outcome"}),
	}
	m.registry.MustRegister(m.steps, m.results, m.cleanups,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// Registry is where the collectors are registered.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// Observe subscribes to the engine's events: it times each step a task
// leaves.
func (m *Metrics) Observe(e engine.Event) {
	if e.Previous != "" && !e.Previous.Final() {
		m.steps.WithLabelValues(string(e.Previous), e.Profile).Observe(e.Took.Seconds())
	}
}

// Result counts a recorded analysis and its cleanup.
func (m *Metrics) Result(r *engine.Result) {
	verdict := string(r.Verdict)
	if verdict == "" {
		verdict = "none" // a cancelled analysis has no verdict: not counted as clean, nor as an error
	}
	m.results.WithLabelValues(string(r.State), verdict).Inc()
	if r.Cleanup != nil {
		outcome := "ok"
		if r.Cleanup.Error != "" {
			outcome = "failed"
		}
		m.cleanups.WithLabelValues(outcome).Inc()
	}
}

// stateCollector reads, at each scrape, what lives in the database and
// the VMs: tasks by state, the queue's depth, quarantined VMs.
type stateCollector struct{ s *Server }

var (
	tasksDesc = prometheus.NewDesc("sandbox_tasks", "Tasks in the queue's database, by state (every host's).",
		[]string{"state"}, nil)
	depthDesc = prometheus.NewDesc("sandbox_queue_depth", "Analyses not yet ended, by profile (every host's).",
		[]string{"profile"}, nil)
	vmStepDesc = prometheus.NewDesc("sandbox_vm_step", "1 for the step each VM of this host is in (idle between tasks).",
		[]string{"vm", "step"}, nil)
	heartbeatDesc = prometheus.NewDesc("sandbox_host_heartbeat_age_seconds",
		"Seconds since each host sharing the queue last said it was alive.", []string{"host"}, nil)
	aliveDesc = prometheus.NewDesc("sandbox_host_alive",
		"1 for a host whose heartbeat is within dead_after, 0 for one the others think dead.", []string{"host"}, nil)
	quarantinedDesc = prometheus.NewDesc("sandbox_vms_quarantined", "VMs of this host that are quarantined.", nil, nil)
	outDesc         = prometheus.NewDesc("sandbox_vms_out_of_service", "VMs of this host the service stopped using.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- tasksDesc
	ch <- depthDesc
	ch <- heartbeatDesc
	ch <- aliveDesc
	ch <- vmStepDesc
	ch <- quarantinedDesc
	ch <- outDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q := c.s.opts.Queue
	if counts, err := q.Counts(ctx); err == nil {
		for _, st := range taskStates {
			ch <- prometheus.MustNewConstMetric(tasksDesc, prometheus.GaugeValue, float64(counts[st]), st)
		}
	}
	if depth, err := q.Depth(ctx); err == nil {
		for _, p := range slices.Sorted(maps.Keys(q.Profiles())) {
			ch <- prometheus.MustNewConstMetric(depthDesc, prometheus.GaugeValue, float64(depth[p]), p)
		}
	}
	if hosts, err := q.Hosts(ctx); err == nil {
		for _, h := range hosts {
			ch <- prometheus.MustNewConstMetric(heartbeatDesc, prometheus.GaugeValue, time.Since(h.Heartbeat).Seconds(), h.Name)
			alive := 0.0
			if h.Alive {
				alive = 1
			}
			ch <- prometheus.MustNewConstMetric(aliveDesc, prometheus.GaugeValue, alive, h.Name)
		}
	}
	latest := c.s.opts.Events.Latest()
	for name := range q.VMs() {
		step := "idle"
		if e, ok := latest[name]; ok && !e.Step.Final() {
			step = string(e.Step)
		}
		ch <- prometheus.MustNewConstMetric(vmStepDesc, prometheus.GaugeValue, 1, name, step)
	}
	n := 0
	for _, vm := range q.VMs() {
		if _, ok, err := c.s.opts.Lifecycle.Quarantined(ctx, vm); err == nil && ok {
			n++
		}
	}
	ch <- prometheus.MustNewConstMetric(quarantinedDesc, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(outDesc, prometheus.GaugeValue, float64(len(q.Unusable())))
}
