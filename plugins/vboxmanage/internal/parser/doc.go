// Package parser reads the text VBoxManage prints: `showvminfo
// --machinereadable`, `list vms` / `list runningvms`, `snapshot list
// --machinereadable` and `--version`.
//
// VBoxManage's output is not a clean format. The machine-readable dump
// mixes quoted and unquoted values, escapes some values and not others,
// prints keys with spaces, keys that repeat, lines without "=" and, on
// Windows, CRLF line ends; the Linux wrapper script may print WARNING lines
// before any of it. Every parser here therefore tolerates junk lines, keeps
// what it cannot interpret rather than guessing, and never panics: each has
// a fuzz target.
package parser
