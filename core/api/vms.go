package api

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
	"github.com/sandboxhq/sandbox/core/statedir"
)

// vmInfo is one VM of this host in GET /v1/vms.
type vmInfo struct {
	Name     string   `json:"name"`
	Plugin   string   `json:"plugin"`
	Profiles []string `json:"profiles"`
	// Status is the VM's state as its driver reports it; StatusError says
	// why it could not be read.
	Status      *hypervisor.Status `json:"status,omitempty"`
	StatusError string             `json:"status_error,omitempty"`
	// Step is the step of the task on the VM, or of the last one.
	Step *engine.Event `json:"step,omitempty"`
	// Lease says who holds the VM's lease (this service while a task runs
	// on it, another sandbox process otherwise) or died holding it.
	Lease *statedir.LeaseInfo `json:"lease,omitempty"`
	// Quarantine is set for a quarantined VM.
	Quarantine *lifecycle.QuarantineEntry `json:"quarantine,omitempty"`
	// OutOfService says why the service stopped using the VM, if it did.
	OutOfService string `json:"out_of_service,omitempty"`
}

// vms reads every VM of this host, their states in parallel.
func (s *Server) vms(ctx context.Context) []vmInfo {
	q := s.opts.Queue
	vms := q.VMs()
	profiles := q.Profiles()
	out := make([]vmInfo, 0, len(vms))
	latest, unusable := s.opts.Events.Latest(), q.Unusable()
	for _, name := range slices.Sorted(maps.Keys(vms)) {
		info := vmInfo{Name: name, Plugin: vms[name].Plugin, Profiles: []string{}}
		for _, p := range slices.Sorted(maps.Keys(profiles)) {
			if slices.Contains(profiles[p].VMs, name) {
				info.Profiles = append(info.Profiles, p)
			}
		}
		if e, ok := latest[name]; ok {
			info.Step = &e
		}
		info.OutOfService = unusable[name]
		out = append(out, info)
	}
	var wg sync.WaitGroup
	for i := range out {
		wg.Go(func() {
			vm := vms[out[i].Name]
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if st, err := vm.Driver.Status(sctx, vm.Name); err != nil {
				out[i].StatusError = err.Error()
			} else {
				out[i].Status = &st
			}
			if e, ok, err := s.opts.Lifecycle.Quarantined(sctx, vm); err == nil && ok {
				out[i].Quarantine = &e
			}
			if s.opts.State != nil {
				if l, err := s.opts.State.Lease(vm.Key()); err == nil {
					out[i].Lease = l
				}
			}
		})
	}
	wg.Wait()
	return out
}

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, map[string]any{"host": s.opts.Queue.Host(), "vms": s.vms(r.Context())})
	return nil
}

// cleanupVM is POST /v1/vms/{name}/cleanup: once the VM's current task
// (if any) has ended, a complete cleanup; a success puts a VM taken out of
// service back into it and lifts its quarantine.
func (s *Server) cleanupVM(w http.ResponseWriter, r *http.Request) error {
	untimed(w)
	rep, err := s.opts.Queue.Cleanup(r.Context(), r.PathValue("name"))
	return writeReport(w, rep, err)
}

// reconcileVM is POST /v1/vms/{name}/reconcile: once the VM's current task
// (if any) has ended, the VM is cleaned if an earlier process left it
// behind, and left alone if it is clean.
func (s *Server) reconcileVM(w http.ResponseWriter, r *http.Request) error {
	untimed(w)
	rep, err := s.opts.Queue.Reconcile(r.Context(), r.PathValue("name"))
	return writeReport(w, rep, err)
}

// untimed lifts write_timeout from a maintenance call: it waits for the
// VM's task to end and then for the lifecycle's own deadlines, and its
// answer is small.
func untimed(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
}

// writeReport answers with a lifecycle report: 200, or 409 when the
// operation failed (its report says why).
func writeReport(w http.ResponseWriter, rep *lifecycle.OpReport, err error) error {
	if rep == nil && err != nil {
		return err
	}
	status := http.StatusOK
	if err != nil {
		status = http.StatusConflict
	}
	writeJSON(w, status, rep)
	return nil
}
