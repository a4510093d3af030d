package libvirt

import (
	"os"
	"path/filepath"
)

// defaultSocket is where libvirtd listens for the URI's path (/system or
// /session), as libvirt's own clients look for it; "" when it cannot be
// known.
func defaultSocket(path string) string {
	if path == "/system" {
		return "/run/libvirt/libvirt-sock"
	}
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "libvirt", "libvirt-sock")
	}
	return ""
}
