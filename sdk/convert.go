package sdk

import (
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/sdk/internal/pb"
)

// The functions below translate between the contract's Go types and their
// wire form and do nothing else.

func statusToPB(s hypervisor.Status) *pb.VMStatus {
	out := &pb.VMStatus{
		Vm:              s.VM,
		Power:           string(s.Power),
		Raw:             s.Raw,
		Lock:            string(s.Lock),
		CurrentSnapshot: s.CurrentSnapshot,
	}
	if !s.StateChanged.IsZero() {
		out.StateChanged = timestamppb.New(s.StateChanged)
	}
	return out
}

// statusFromPB maps words this host does not know to unknown, so that a
// newer driver's state is never mistaken for off (§3.2).
func statusFromPB(p *pb.VMStatus) hypervisor.Status {
	s := hypervisor.Status{
		VM:              p.GetVm(),
		Power:           hypervisor.PowerState(p.GetPower()),
		Raw:             p.GetRaw(),
		Lock:            hypervisor.LockState(p.GetLock()),
		CurrentSnapshot: p.GetCurrentSnapshot(),
	}
	if !s.Power.Valid() {
		s.Power = hypervisor.PowerUnknown
	}
	if !s.Lock.Valid() {
		s.Lock = hypervisor.LockUnknown
	}
	if p.GetStateChanged() != nil {
		s.StateChanged = p.GetStateChanged().AsTime()
	}
	return s
}

func infoToPB(i hypervisor.Info) *pb.DriverInfo {
	caps := make([]string, len(i.Capabilities))
	for n, c := range i.Capabilities {
		caps[n] = string(c)
	}
	return &pb.DriverInfo{
		Name:            i.Name,
		Version:         i.Version,
		ContractVersion: int32(i.ContractVersion),
		Hypervisor:      i.Hypervisor,
		Capabilities:    caps,
	}
}

func infoFromPB(p *pb.DriverInfo) hypervisor.Info {
	caps := make([]hypervisor.Capability, len(p.GetCapabilities()))
	for n, c := range p.GetCapabilities() {
		caps[n] = hypervisor.Capability(c)
	}
	return hypervisor.Info{
		Name:            p.GetName(),
		Version:         p.GetVersion(),
		ContractVersion: int(p.GetContractVersion()),
		Hypervisor:      p.GetHypervisor(),
		Capabilities:    hypervisor.NewCapabilities(caps...),
	}
}

func vmsToPB(vms []hypervisor.VM) *pb.VMList {
	out := &pb.VMList{Vms: make([]*pb.VM, len(vms))}
	for i, v := range vms {
		out.Vms[i] = &pb.VM{Name: v.Name, Id: v.ID, Power: string(v.Power)}
	}
	return out
}

func vmsFromPB(p *pb.VMList) []hypervisor.VM {
	out := make([]hypervisor.VM, len(p.GetVms()))
	for i, v := range p.GetVms() {
		power := hypervisor.PowerState(v.GetPower())
		if !power.Valid() {
			power = hypervisor.PowerUnknown
		}
		out[i] = hypervisor.VM{Name: v.GetName(), ID: v.GetId(), Power: power}
	}
	return out
}

func execToPB(vm string, r hypervisor.ExecRequest) *pb.ExecRequest {
	out := &pb.ExecRequest{Vm: vm, Path: r.Path, Args: r.Args, MaxOutput: r.MaxOutput}
	if r.Timeout > 0 {
		out.Timeout = durationpb.New(r.Timeout)
	}
	return out
}

func execFromPB(p *pb.ExecRequest) hypervisor.ExecRequest {
	r := hypervisor.ExecRequest{Path: p.GetPath(), Args: p.GetArgs(), MaxOutput: p.GetMaxOutput()}
	if p.GetTimeout() != nil {
		r.Timeout = p.GetTimeout().AsDuration()
	}
	return r
}

func configToPB(c Config) *pb.ConfigureRequest {
	return &pb.ConfigureRequest{Plugin: c.Plugin, File: c.File, Dir: c.Dir, Table: c.Table, Data: c.Data}
}

func configFromPB(p *pb.ConfigureRequest) Config {
	return Config{Plugin: p.GetPlugin(), File: p.GetFile(), Dir: p.GetDir(), Table: p.GetTable(), Data: p.GetData()}
}

func cleanupToPB(r hypervisor.CleanupResult) *pb.CleanupResult {
	out := &pb.CleanupResult{Steps: make([]*pb.CleanupStep, len(r.Steps))}
	for i, s := range r.Steps {
		out.Steps[i] = &pb.CleanupStep{Action: s.Action, Duration: durationpb.New(s.Duration), Outcome: s.Outcome}
	}
	return out
}

func cleanupFromPB(p *pb.CleanupResult) hypervisor.CleanupResult {
	r := hypervisor.CleanupResult{Steps: make([]hypervisor.CleanupStep, len(p.GetSteps()))}
	for i, s := range p.GetSteps() {
		r.Steps[i] = hypervisor.CleanupStep{Action: s.GetAction(), Duration: s.GetDuration().AsDuration(), Outcome: s.GetOutcome()}
	}
	return r
}

func execResultToPB(r hypervisor.ExecResult) *pb.ExecResult {
	return &pb.ExecResult{ExitCode: int32(r.ExitCode), Stdout: r.Stdout, Stderr: r.Stderr,
		StdoutTruncated: r.StdoutTruncated, StderrTruncated: r.StderrTruncated}
}

func execResultFromPB(p *pb.ExecResult) hypervisor.ExecResult {
	return hypervisor.ExecResult{ExitCode: int(p.GetExitCode()), Stdout: p.GetStdout(), Stderr: p.GetStderr(),
		StdoutTruncated: p.GetStdoutTruncated(), StderrTruncated: p.GetStderrTruncated()}
}
