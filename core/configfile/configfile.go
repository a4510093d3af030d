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
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

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
	docs   string
}

// At decodes only the table at the given key path, e.g. At("plugins",
// "fake", "config"). A missing table decodes as empty.
func At(key ...string) Option {
	return func(o *options) { o.at = key }
}

// Docs names where the keys being decoded are documented, for the hint of
// an unknown key: "docs/qemu.md#settings", or the plugin's own
// documentation for a plugin that is not sandbox's. Default
// docs/configuration.md, which documents sandbox's own keys.
func Docs(where string) Option {
	return func(o *options) { o.docs = where }
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
	o := options{docs: "docs/configuration.md"}
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
	if err := d.checkDurations(md, reflect.TypeOf(v), o.at); err != nil {
		return err
	}
	for _, key := range md.Undecoded() {
		if !hasPrefix(key, o.at) || len(key) == len(o.at) || ignored(key, o.ignore) {
			continue
		}
		return &Error{File: d.File, Line: d.Line(key), Key: key.String(),
			Msg: "unknown key; check its spelling against " + o.docs}
	}
	return nil
}

// Errorf returns an *Error for key (a full path) with its line looked up.
// Validation code uses it for mistakes that decoding cannot see, such as a
// missing required key.
func (d Document) Errorf(key []string, format string, args ...any) *Error {
	return &Error{File: d.File, Line: d.Line(key), Key: toml.Key(key).String(), Msg: fmt.Sprintf(format, args...)}
}

// lineAt is the line of a parse error's offending byte. The toml package
// counts a newline as the start of the next line, so an error found at
// the end of a line (an unclosed table header) would be reported one line
// late.
func (d Document) lineAt(p toml.Position) int {
	if p.Start <= 0 || p.Start > len(d.Data) {
		return p.Line
	}
	return bytes.Count(d.Data[:p.Start], []byte("\n")) + 1
}

var lineRe = regexp.MustCompile(`^toml: line (\d+)(?: \(last key "((?:[^"\\]|\\.)*)"\))?: (.*)$`)

// wrap turns the toml package's errors into *Error.
func (d Document) wrap(err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return &Error{File: d.File, Line: d.lineAt(pe.Position), Key: pe.LastKey, Msg: pe.Message}
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

var durationType = reflect.TypeOf(time.Duration(0))

// checkDurations rejects bare numbers for durations. The toml package reads
// `timeout = 10` into a time.Duration as 10 nanoseconds, which no one ever
// means; a duration must be written with its unit, as a string.
func (d Document) checkDurations(md toml.MetaData, root reflect.Type, at []string) error {
	for _, key := range md.Keys() {
		if !hasPrefix(key, at) || len(key) == len(at) || md.Type(key...) != "Integer" {
			continue
		}
		if t, ok := fieldType(root, key[len(at):]); ok && t == durationType {
			return &Error{File: d.File, Line: d.Line(key), Key: key.String(),
				Msg: `a duration needs a unit: write it as a string such as "15s" or "250ms" ` +
					"(a bare number would be read as nanoseconds)"}
		}
	}
	return nil
}

// fieldType is the Go type a TOML key decodes into below t, following
// struct fields by their toml tag (or name), embedded structs, map values,
// slice elements and pointers.
func fieldType(t reflect.Type, path []string) (reflect.Type, bool) {
	for _, k := range path {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			t = t.Elem()
		}
		switch t.Kind() {
		case reflect.Map:
			t = t.Elem()
		case reflect.Struct:
			f, ok := structField(t, k)
			if !ok {
				return nil, false
			}
			t = f
		default:
			return nil, false
		}
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t, true
}

func structField(t reflect.Type, key string) (reflect.Type, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				if inner, ok := structField(ft, key); ok {
					return inner, true
				}
			}
			continue
		}
		if name == key || (name == "" && strings.EqualFold(f.Name, key)) {
			return f.Type, true
		}
	}
	return nil, false
}
