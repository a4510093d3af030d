package runner

import "strings"

// envKey folds case: Windows environment names are case-insensitive.
func envKey(k string) string { return strings.ToUpper(k) }
