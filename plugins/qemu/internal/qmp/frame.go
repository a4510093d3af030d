package qmp

import (
	"errors"
	"slices"
)

// ErrFrameTooLong: a line was longer than the connection takes. It was
// read past and dropped, so the next read starts at the next line.
var ErrFrameTooLong = errors.New("a reply was longer than the plugin takes from its socket; dropped it")

// framer cuts a byte stream into lines (frames) without ever holding more
// than maxFrame bytes of one, whatever the other end sends. It knows
// JSON's strings: one longer than maxString characters (an escape is one
// character) keeps only its first maxString characters, and the names of
// the members whose values were cut are told with the frame. A frame
// longer than maxFrame all the same (a line of digits, of many short
// strings, a line that never ends) is read past to its end and reported
// as ErrFrameTooLong. A 0xFF byte, which never occurs in JSON and which
// the guest agent sends to mark where stale data ends, resets what it
// knows of the line's JSON but is kept.
//
// maxString is a multiple of 4, so that a cut base64 string still
// decodes.
type framer struct {
	maxFrame, maxString int

	out  []byte   // the frame so far
	cuts []string // members whose string value was cut
	long bool     // the frame outgrew maxFrame: dropping it to its end

	inStr   bool   // in a string
	cutting bool   // in a string past maxString: dropping it to its end
	esc     bool   // after a backslash
	hex     int    // hex digits of a \u escape still to come
	units   int    // characters of the current string so far
	cur     []byte // the current string's start, for member names
	last    []byte // the last string that ended, when short
	strEnd  bool   // the last token was a string: a ':' makes it a name
	key     string // the member whose value is being read
}

// maxName is the longest member name a framer remembers.
const maxName = 64

// maxCuts is how many cut members a frame tells.
const maxCuts = 8

// newFramer returns a framer whose strings keep maxString characters,
// rounded up to a multiple of 4, in frames of at most maxFrame bytes.
func newFramer(maxString, maxFrame int) *framer {
	f := &framer{}
	f.setLimits(maxString, maxFrame)
	return f
}

func (f *framer) setLimits(maxString, maxFrame int) {
	f.maxString = (max(maxString, 4) + 3) &^ 3
	f.maxFrame = max(maxFrame, 1)
}

// scan reads p up to the end of the current frame. It returns how much of
// p it consumed and whether a frame ended there; take returns it.
func (f *framer) scan(p []byte) (int, bool) {
	for i, b := range p {
		if b == '\n' {
			return i + 1, true
		}
		if f.long {
			continue
		}
		if b == 0xff {
			f.inStr, f.cutting, f.esc, f.hex, f.strEnd = false, false, false, 0, false
			f.put(b)
			continue
		}
		switch {
		case f.cutting:
			switch {
			case f.esc:
				f.esc = false
			case b == '\\':
				f.esc = true
			case b == '"':
				f.cutting, f.inStr = false, false
			}
		case f.inStr:
			f.inString(b)
		default:
			switch b {
			case '"':
				f.inStr, f.units, f.cur = true, 0, f.cur[:0]
			case ':':
				if f.strEnd {
					f.key = string(f.last)
				}
				f.strEnd = false
			case ' ', '\t', '\r':
			default:
				f.strEnd = false
			}
			f.put(b)
		}
	}
	return len(p), false
}

// inString takes byte b of a string.
func (f *framer) inString(b byte) {
	switch {
	case f.hex > 0:
		if f.hex--; f.hex == 0 {
			f.units++
		}
	case f.esc:
		f.esc = false
		if b == 'u' {
			f.hex = 4
		} else {
			f.units++
		}
	case b == '"':
		f.inStr, f.strEnd = false, true
		f.last = append(f.last[:0], f.cur...)
		if len(f.cur) >= maxName {
			f.last = f.last[:0]
		}
	default:
		// A character begins here: past the bound the string ends.
		if f.units >= f.maxString {
			f.put('"')
			f.cutting, f.esc = true, b == '\\'
			if len(f.cuts) < maxCuts && !slices.Contains(f.cuts, f.key) {
				f.cuts = append(f.cuts, f.key)
			}
			return
		}
		if b == '\\' {
			f.esc = true
		} else {
			f.units++
		}
	}
	if len(f.cur) < maxName {
		f.cur = append(f.cur, b)
	}
	f.put(b)
}

// put adds b to the frame, or gives up the frame when it is full.
func (f *framer) put(b byte) {
	if len(f.out) >= f.maxFrame {
		f.long, f.out = true, nil
		return
	}
	f.out = append(f.out, b)
}

// take returns the frame that ended, without its line end, and the
// members it cut, and starts the next one. A frame that outgrew maxFrame
// is ErrFrameTooLong.
func (f *framer) take() ([]byte, []string, error) {
	line, cuts, long := f.out, f.cuts, f.long
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	*f = framer{maxFrame: f.maxFrame, maxString: f.maxString, cur: f.cur[:0], last: f.last[:0]}
	if long {
		return nil, nil, ErrFrameTooLong
	}
	if line == nil {
		line = []byte{}
	}
	return line, cuts, nil
}
