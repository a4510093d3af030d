package engine

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"
)

// Batch is `sandbox run`'s in-memory task list: every sample analysed with
// every profile.
type Batch struct {
	// Samples are the files, each analysed once per profile.
	Samples []Sample
	// Profiles name the analyses, in the order of each report's results;
	// each must be a profile of the pool.
	Profiles []string
	// OutDir receives one directory per sample, named after its SHA256,
	// holding report.json and each profile's artifacts.
	OutDir string
}

// Summary is what a batch did.
type Summary struct {
	// Reports has one report per sample, in the order of Batch.Samples.
	Reports []*Report `json:"reports"`
	// Unusable names the VMs the pool left out of service, with why.
	Unusable map[string]string `json:"unusable_vms,omitempty"`
	// Cancelled is set when the run was interrupted.
	Cancelled bool `json:"cancelled,omitempty"`
	// Duration is the run's wall time.
	Duration time.Duration `json:"duration_ns"`
}

// Failed counts the results that did not end done.
func (s *Summary) Failed() int {
	n := 0
	for _, r := range s.Reports {
		for _, res := range r.Results {
			if res.State != StepDone {
				n++
			}
		}
	}
	return n
}

// RunBatch runs every task of the batch through the pool, in order, and
// writes each sample's report.json once its last task has ended. It
// returns when every task has ended: done, failed, or cancelled because
// ctx ended, in which case every VM that was in use has been cleaned
// first. The error is the first report that could not be written; a
// task's failure is in its result.
func (p *Pool) RunBatch(ctx context.Context, b Batch) (*Summary, error) {
	begun := time.Now()
	outDir, err := filepath.Abs(b.OutDir)
	if err != nil {
		return nil, fmt.Errorf("output directory: %w", err)
	}
	for _, name := range b.Profiles {
		if _, ok := p.profiles[name]; !ok {
			return nil, fmt.Errorf("profile %s is not one of the pool's", name)
		}
	}
	sum := &Summary{Reports: make([]*Report, len(b.Samples))}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		werr error
	)
	for i, s := range b.Samples {
		dir := filepath.Join(outDir, s.SHA256)
		results := make([]*Result, len(b.Profiles))
		left := len(b.Profiles)
		for j, name := range b.Profiles {
			t := Task{ID: fmt.Sprintf("%s/%s", s.SHA256[:min(12, len(s.SHA256))], name), Sample: s, Profile: p.profiles[name], Dir: dir}
			// Queued here, in order, so that the tasks get VMs in the
			// order of the samples, whoever's goroutine runs first.
			q := p.queue(t)
			wg.Go(func() {
				res := q.end(ctx)
				mu.Lock()
				defer mu.Unlock()
				results[j] = res
				if left--; left > 0 {
					return
				}
				rep := NewReport(s, begun, time.Now(), results)
				sum.Reports[i] = rep
				if err := WriteReport(dir, rep); err != nil {
					p.engine.log.Error("cannot write the report", "sample", s.Path, "error", err)
					if werr == nil {
						werr = fmt.Errorf("report of %s: %w", s.Path, err)
					}
				}
			})
		}
	}
	wg.Wait()
	sum.Unusable = p.Unusable()
	sum.Cancelled = ctx.Err() != nil
	sum.Duration = time.Since(begun)
	return sum, werr
}

// end runs a task of a batch to its end, whatever happens: a task that
// found no VM, or was interrupted before it had one, ends never run.
func (q *queued) end(ctx context.Context) *Result {
	t := q.t
	res, err := q.run(ctx)
	if err == nil {
		return res
	}
	var nv *NoVMError
	switch {
	case errors.As(err, &nv):
		res = NotRun(t.Profile.Name, StepFailed, err.Error())
		res.Skipped = nv.Skipped
	case ctx.Err() != nil:
		res = NotRun(t.Profile.Name, StepCancelled, "the run was interrupted before a VM was free")
	default:
		res = NotRun(t.Profile.Name, StepFailed, err.Error())
	}
	return res
}
