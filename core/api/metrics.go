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
	m.results.WithLabelValues(string(r.State), string(r.Verdict)).Inc()
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
	quarantinedDesc = prometheus.NewDesc("sandbox_vms_quarantined", "VMs of this host that are quarantined.", nil, nil)
	outDesc         = prometheus.NewDesc("sandbox_vms_out_of_service", "VMs of this host the service stopped using.", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- tasksDesc
	ch <- depthDesc
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
