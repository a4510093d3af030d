package sdk

import (
	"context"
	"encoding/json"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/sandboxhq/sandbox/core/hypervisor"
)

// WatchCloseGrace is how long the SDK keeps reading a driver's watch
// channel after the watch's context ended, waiting for the driver to close
// it (§10.1). A channel still open then is abandoned: the stream has already
// ended for the host, the SDK stops reading, and Diagnostics counts it.
const WatchCloseGrace = time.Second

// Diagnostics is what the SDK inside a plugin saw its driver do against the
// contract where the wire hides it from the host. The host cannot see these
// by itself: its client adapter closes its own watch channel when the
// watch's context ends, and answers at the caller's deadline whatever the
// driver does after it. The conformance suite reads them to check §10.1
// and §12.1 on the driver itself.
type Diagnostics struct {
	// UnclosedWatches counts the watches whose driver channel was still open
	// WatchCloseGrace after their context ended.
	UnclosedWatches int `json:"unclosed_watches,omitempty"`
	// Late is, for each call ("restore vm1"), how long past its deadline the
	// driver answered it at worst, or has been working on it so far if it has
	// not answered yet. Calls answered in time are not listed.
	Late map[string]time.Duration `json:"late,omitempty"`
	// LateSum is, for each call, how late past their deadlines the driver
	// answered all of its calls of that name together (those under way
	// counting how late they are so far). Late keeps the worst, which a
	// second late answer may not change; LateSum grows with every late
	// answer, so that a reader comparing two readings sees a new one.
	LateSum map[string]time.Duration `json:"late_sum,omitempty"`
	// Tagged is what the SDK saw of each call its caller tagged (TagCall):
	// a tag that is missing never reached the driver (or was one of more
	// than maxTagged since). It tells a caller that stopped waiting at its
	// deadline whether the driver has the call at all, and when the driver
	// is done with it, instead of guessing how long to wait.
	Tagged map[string]TaggedCall `json:"tagged,omitempty"`
	// KeepsTags says the SDK keeps Tagged: then a tag missing from it never
	// reached the driver, even when Tagged is empty because none has. An
	// SDK from before tagged calls sends neither, and its Tagged says
	// nothing of where a call went.
	KeepsTags bool `json:"keeps_tags,omitempty"`
}

// TaggedCall is what the SDK saw of one tagged call.
type TaggedCall struct {
	// Answered says the driver returned from the call.
	Answered bool `json:"answered,omitempty"`
	// Late is how long past its deadline the driver answered it, or has
	// been working on it so far; zero if in time.
	Late time.Duration `json:"late,omitempty"`
	// Took is how long the driver spent on the call once it reached it,
	// when answered: the driver's own time, which the caller's clock
	// cannot tell from a busy machine's delays on the wire.
	Took time.Duration `json:"took,omitempty"`
}

// tagHeader is the request header that carries a call's tag.
const tagHeader = "sandbox-call-tag"

// maxTagged bounds the tagged calls a plugin remembers: the suite waits on
// a few at a time, and every answer's header carries them all.
const maxTagged = 64

// TagCall returns a context whose calls through a plugin client carry tag,
// so that Diagnostics.Tagged reports whether each reached the driver,
// whether the driver answered it, and how late. The conformance suite tags
// its calls under short deadlines; other callers need not.
func TagCall(ctx context.Context, tag string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, tagHeader, tag)
}

// LateFor is the worst lateness of the calls of op (empty for any) on vm.
func (d Diagnostics) LateFor(op, vm string) time.Duration {
	var worst time.Duration
	for call, late := range d.Late {
		o, v, _ := strings.Cut(call, " ")
		if v == vm && (op == "" || o == op) {
			worst = max(worst, late)
		}
	}
	return worst
}

// diagHeader is the response header that carries the server's Diagnostics
// to the client, as JSON, on every call and watch stream.
const diagHeader = "sandbox-diagnostics"

// lateNoise is lateness too small to report: the time any call takes to
// notice its context ended and unwind.
const lateNoise = 10 * time.Millisecond

// diagnostics is the server side's record, one per plugin process.
type diagnostics struct {
	logger hclog.Logger

	mu       sync.Mutex
	unclosed int
	warned   bool
	late     map[string]time.Duration
	lateSum  map[string]time.Duration
	inFlight map[*flight]struct{}
	tagged   tagRecord
}

// tagRecord keeps what is known of the most recent maxTagged tagged calls.
type tagRecord struct {
	calls map[string]TaggedCall
	order []string // the keys of calls, oldest first
}

// set records c for tag, forgetting the oldest tag beyond maxTagged.
func (r *tagRecord) set(tag string, c TaggedCall) {
	if r.calls == nil {
		r.calls = map[string]TaggedCall{}
	}
	if _, known := r.calls[tag]; !known {
		r.order = append(r.order, tag)
		if len(r.order) > maxTagged {
			delete(r.calls, r.order[0])
			r.order = r.order[1:]
		}
	}
	r.calls[tag] = c
}

// flight is a call under way that has a deadline.
type flight struct {
	call     string
	tag      string
	deadline time.Time
	begun    time.Time
}

// snapshot is the record as the client sees it: in-flight calls count as
// late by how long past their deadline they have run so far.
func (g *diagnostics) snapshot() Diagnostics {
	g.mu.Lock()
	defer g.mu.Unlock()
	d := Diagnostics{UnclosedWatches: g.unclosed, Late: maps.Clone(g.late), LateSum: maps.Clone(g.lateSum), Tagged: maps.Clone(g.tagged.calls), KeepsTags: true}
	now := time.Now()
	for f := range g.inFlight {
		late := now.Sub(f.deadline)
		if f.tag != "" && late > lateNoise && d.Tagged != nil {
			d.Tagged[f.tag] = TaggedCall{Late: late}
		}
		if late > lateNoise {
			if d.Late == nil {
				d.Late, d.LateSum = map[string]time.Duration{}, map[string]time.Duration{}
			}
			d.Late[f.call] = max(d.Late[f.call], late)
			d.LateSum[f.call] += late
		}
	}
	return d
}

func (g *diagnostics) begin(call, tag string, deadline time.Time) *flight {
	f := &flight{call: call, tag: tag, deadline: deadline, begun: time.Now()}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.inFlight == nil {
		g.inFlight = map[*flight]struct{}{}
	}
	g.inFlight[f] = struct{}{}
	if tag != "" {
		g.tagged.set(tag, TaggedCall{})
	}
	return f
}

func (g *diagnostics) end(f *flight) {
	late := time.Since(f.deadline)
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.inFlight, f)
	if f.tag != "" {
		c := TaggedCall{Answered: true, Took: time.Since(f.begun)}
		if late > lateNoise {
			c.Late = late
		}
		g.tagged.set(f.tag, c)
	}
	if late > lateNoise {
		if g.late == nil {
			g.late, g.lateSum = map[string]time.Duration{}, map[string]time.Duration{}
		}
		g.late[f.call] = max(g.late[f.call], late)
		g.lateSum[f.call] += late
	}
}

// unclosedWatch records a watch channel left open past its context, and
// tells the driver's author once per process: the host never will, since
// its side of the stream ended on time.
func (g *diagnostics) unclosedWatch(vm string) {
	g.mu.Lock()
	g.unclosed++
	first := !g.warned
	g.warned = true
	g.mu.Unlock()
	if first && g.logger != nil {
		g.logger.Warn("the driver left a watch channel open after the watch's context ended, which the contract forbids (§10.1): "+
			"close the channel when ctx is done; the SDK stopped reading it and counts every such watch",
			"vm", vm, "grace", WatchCloseGrace)
	}
}

// header is the record as response metadata.
func (g *diagnostics) header() metadata.MD {
	data, err := json.Marshal(g.snapshot())
	if err != nil {
		return nil
	}
	return metadata.Pairs(diagHeader, string(data))
}

// serverOptions install the interceptors that keep the record and send it
// with every answer.
func (g *diagnostics) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(g.unary),
		grpc.ChainStreamInterceptor(g.stream),
	}
}

// ours reports whether a gRPC method is one of the hypervisor services'
// (go-plugin serves a few of its own on the same server).
func ours(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/sandbox.hypervisor.")
}

func (g *diagnostics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !ours(info.FullMethod) {
		return handler(ctx, req)
	}
	var f *flight
	if deadline, ok := ctx.Deadline(); ok {
		var tag string
		if v := metadata.ValueFromIncomingContext(ctx, tagHeader); len(v) > 0 {
			tag = v[0]
		}
		f = g.begin(callName(info.FullMethod, req), tag, deadline)
	}
	resp, err := handler(ctx, req)
	if f != nil {
		g.end(f)
	}
	// The header goes out with the answer; a caller gone past its deadline
	// gets it with its next call instead.
	_ = grpc.SetHeader(ctx, g.header())
	return resp, err
}

func (g *diagnostics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if ours(info.FullMethod) {
		_ = ss.SetHeader(g.header())
	}
	return handler(srv, ss)
}

// callName is "op vm" for a request, as Diagnostics.Late keys it.
func callName(fullMethod string, req any) string {
	op := strings.ToLower(fullMethod[strings.LastIndex(fullMethod, "/")+1:])
	switch op {
	case "listvms":
		op = hypervisor.OpList
	case "copyin":
		op = hypervisor.OpCopyIn
	case "copyout":
		op = hypervisor.OpCopyOut
	case "poweroff":
		op = hypervisor.OpStop
	}
	if r, ok := req.(interface{ GetVm() string }); ok && r.GetVm() != "" {
		return op + " " + r.GetVm()
	}
	return op
}

// diagStore is the client side's copy of the server's record: the most
// recent header wins, since the server's record only grows.
type diagStore struct {
	mu     sync.Mutex
	d      Diagnostics
	tagged tagRecord
}

// note takes the record from a response header, if it carries one.
func (s *diagStore) note(md metadata.MD) {
	v := md.Get(diagHeader)
	if len(v) == 0 {
		return
	}
	var d Diagnostics
	if err := json.Unmarshal([]byte(v[len(v)-1]), &d); err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.d.UnclosedWatches = max(s.d.UnclosedWatches, d.UnclosedWatches)
	s.d.KeepsTags = s.d.KeepsTags || d.KeepsTags
	for call, late := range d.Late {
		if s.d.Late == nil {
			s.d.Late = map[string]time.Duration{}
		}
		s.d.Late[call] = max(s.d.Late[call], late)
	}
	for call, sum := range d.LateSum {
		if s.d.LateSum == nil {
			s.d.LateSum = map[string]time.Duration{}
		}
		s.d.LateSum[call] = max(s.d.LateSum[call], sum)
	}
	// Headers may arrive out of order: an answer is final, and a call
	// only gets later.
	for tag, c := range d.Tagged {
		was := s.tagged.calls[tag]
		s.tagged.set(tag, TaggedCall{Answered: was.Answered || c.Answered, Late: max(was.Late, c.Late), Took: max(was.Took, c.Took)})
	}
}

func (s *diagStore) get() Diagnostics {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Diagnostics{UnclosedWatches: s.d.UnclosedWatches, Late: maps.Clone(s.d.Late), LateSum: maps.Clone(s.d.LateSum), Tagged: maps.Clone(s.tagged.calls), KeepsTags: s.d.KeepsTags}
}

// header is a call option that hands the call's response header to s once
// the call returns: call the returned function then.
func (s *diagStore) header() (grpc.CallOption, func()) {
	md := new(metadata.MD)
	return grpc.Header(md), func() { s.note(*md) }
}
