// Package hypervisor is the contract between sandbox and a hypervisor driver.
//
// A driver turns the operations sandbox needs (status, start, stop, unlock,
// snapshot restore, cleanup, guest operations) into calls on one hypervisor.
// The core never talks to a hypervisor any other way, so everything the core
// relies on is written down here, method by method, and numbered in
// docs/contract.md (the "§" references below) so that the conformance suite
// can cite the clause each check enforces.
//
// The package deliberately imports nothing else of this module: drivers,
// the SDK, the plugin host and the lifecycle core all depend on it, never
// the other way round.
package hypervisor

// ContractVersion is the version of the contract described by this package.
// Version 1 is the legacy contract (status, start, hard power-off, restore);
// version 2 adds capabilities and every other operation.
const ContractVersion = 2
