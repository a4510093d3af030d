// Package configfile decodes TOML configuration strictly: an unknown key, a
// value of the wrong type or a missing required setting is an *Error naming
// the file, the line and the full key, so that an operator can fix
// config.toml without guessing.
//
// The host decodes its own part of config.toml with it, and the SDK decodes
// each plugin's table with it inside the plugin process, so both report
// mistakes the same way.
package configfile

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Error is a configuration mistake at a known place.
type Error struct {
	// File is the configuration file's path as the user gave it.
	File string
	// Line is the 1-based line of the offending key; 0 when unknown.
	Line int
	// Key is the full dotted key, e.g. "plugins.fake.config.vms.a.ram".
	Key string
	// Msg says what is wrong and, where it can, what to write instead.
	Msg string
}

// Error formats as file:line: key: message, the form editors jump to.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Document is one configuration file's text.
type Document struct {
	// File names the document in errors.
	File string
	// Data is the document's TOML text.
	Data []byte
}

// Option adjusts Decode.
type Option func(*options)

type options struct {
	at     []string
	ignore []string
}

// At decodes only the table at the given key path, e.g. At("plugins",
// "fake", "config"). A missing table decodes as empty.
func At(key ...string) Option {
	return func(o *options) { o.at = key }
}

// Ignore leaves keys matching pattern undecoded without complaint. The
// pattern is a dotted key in which "*" matches any one part, e.g.
// "plugins.*.config": that key and everything under it is someone else's to
// decode.
func Ignore(pattern string) Option {
	return func(o *options) { o.ignore = append(o.ignore, pattern) }
}

// Decode decodes the document (or the table chosen by At) into v, which
// must be a pointer to a TOML-tagged struct. Every key in the decoded part
// that v has no field for is an error, reported with its line.
func (d Document) Decode(v any, opts ...Option) error {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var root toml.Primitive
	md, err := toml.Decode(string(d.Data), &root)
	if err != nil {
		return d.wrap(err)
	}
	prim := root
	for i, k := range o.at {
		var level map[string]toml.Primitive
		if err := md.PrimitiveDecode(prim, &level); err != nil {
			return &Error{File: d.File, Line: d.Line(o.at[:i]), Key: strings.Join(o.at[:i], "."),
				Msg: "must be a table"}
		}
		p, ok := level[k]
		if !ok {
			return nil
		}
		prim = p
	}
	if err := md.PrimitiveDecode(prim, v); err != nil {
		return d.wrap(err)
	}
	for _, key := range md.Undecoded() {
		if !hasPrefix(key, o.at) || len(key) == len(o.at) || ignored(key, o.ignore) {
			continue
		}
		return &Error{File: d.File, Line: d.Line(key), Key: key.String(),
			Msg: "unknown key; check its spelling against docs/configuration.md"}
	}
	return nil
}

// Errorf returns an *Error for key (a full path) with its line looked up.
// Validation code uses it for mistakes that decoding cannot see, such as a
// missing required key.
func (d Document) Errorf(key []string, format string, args ...any) *Error {
	return &Error{File: d.File, Line: d.Line(key), Key: toml.Key(key).String(), Msg: fmt.Sprintf(format, args...)}
}

var lineRe = regexp.MustCompile(`^toml: line (\d+)(?: \(last key "((?:[^"\\]|\\.)*)"\))?: (.*)$`)

// wrap turns the toml package's errors into *Error.
func (d Document) wrap(err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return &Error{File: d.File, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}
	}
	if m := lineRe.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		key, _ := strconv.Unquote(`"` + m[2] + `"`)
		return &Error{File: d.File, Line: line, Key: key, Msg: m[3]}
	}
	return &Error{File: d.File, Msg: strings.TrimPrefix(err.Error(), "toml: ")}
}

func hasPrefix(key toml.Key, prefix []string) bool {
	if len(key) < len(prefix) {
		return false
	}
	for i, p := range prefix {
		if key[i] != p {
			return false
		}
	}
	return true
}

func ignored(key toml.Key, patterns []string) bool {
	for _, p := range patterns {
		parts := strings.Split(p, ".")
		if len(key) < len(parts) {
			continue
		}
		match := true
		for i, part := range parts {
			if part != "*" && part != key[i] {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}
