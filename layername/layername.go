// Package layername owns the names of layer entries: which names a layer (tar, TOC, tar-split,
// composefs dump) may hold, what a whiteout names, and whether a TOC can carry a name exactly.
// Every package that reads an entry name validates it here, so a name that one path refuses no
// other path accepts.
package layername

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"unicode/utf8"

	"github.com/kura-oci/kura/errdefs"
)

// OCI whiteouts: ".wh.NAME" deletes NAME from the layers below; a directory holding
// OpaqueMarker hides everything the layers below put in it.
const (
	WhiteoutPrefix = ".wh."
	OpaqueMarker   = ".wh..wh..opq"
	// metaPrefix starts AUFS metadata names (".wh..wh.plnk", ".wh..wh.aufs"); the OCI spec
	// knows only OpaqueMarker among them.
	metaPrefix = WhiteoutPrefix + WhiteoutPrefix
)

// Bounds of Linux path names.
const (
	MaxLen     = 4096 // PATH_MAX
	MaxElement = 255  // NAME_MAX
)

// Kind says what an entry name means in the layer merge.
type Kind int

const (
	// Plain names a file, directory, link or device.
	Plain Kind = iota
	// Whiteout deletes Name.Target from the layers below.
	Whiteout
	// Opaque hides what the layers below put in Name.Dir.
	Opaque
)

// Name is a validated entry name.
type Name struct {
	// Path is the clean relative path ("./a/b/" → "a/b"); the root is ".".
	Path string
	// Dir is the directory that holds the entry ("." at the top).
	Dir string
	// Base is the last element ("." for the root).
	Base string
	Kind Kind
	// Target is, for a whiteout, the path it deletes.
	Target string
}

// Clean validates a layer entry name and returns its clean relative form ("./a/b/" → "a/b",
// the root is "."). It refuses, as hostile input (errdefs.ErrInvalid), names that are empty,
// absolute, climb out with "..", contain NUL, exceed PATH_MAX, or use a whiteout name as a
// directory. Whiteout names themselves are checked by Parse. An element over NAME_MAX is a name
// a layer may hold (and export) but no file system can create: Element refuses it.
func Clean(name string) (string, error) {
	switch {
	case name == "":
		return "", invalidf("empty entry name")
	case len(name) > MaxLen:
		return "", invalidf("entry name of %d bytes is over PATH_MAX", len(name))
	case strings.IndexByte(name, 0) >= 0:
		return "", invalidf("entry name %q contains NUL", name)
	case strings.HasPrefix(name, "/"):
		return "", invalidf("absolute entry name %q", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." { // checked before cleaning, which would hide "a/.." as "."
			return "", invalidf("entry name %q climbs out with \"..\"", name)
		}
	}
	clean := path.Clean(name)
	parts := strings.Split(clean, "/")
	for _, part := range parts[:len(parts)-1] {
		if strings.HasPrefix(part, WhiteoutPrefix) {
			return "", invalidf("entry name %q uses the whiteout %q as a directory", name, part)
		}
	}
	return clean, nil
}

// Parse validates an entry name (see Clean) and says what it means in the merge. A whiteout
// must name exactly one element of its own directory: ".wh." followed by nothing, ".", ".." or
// anything with a "/" is hostile, and so is any ".wh..wh." name but OpaqueMarker (AUFS metadata,
// which the OCI spec does not define and no OCI tool writes).
func Parse(name string) (Name, error) {
	clean, err := Clean(name)
	if err != nil {
		return Name{}, err
	}
	n := Name{Path: clean, Dir: path.Dir(clean), Base: path.Base(clean)}
	if clean == "." {
		n.Base = "."
		return n, nil
	}
	switch {
	case n.Base == OpaqueMarker:
		n.Kind = Opaque
	case strings.HasPrefix(n.Base, metaPrefix):
		return Name{}, invalidf("entry name %q: %q is not an OCI whiteout", name, n.Base)
	case strings.HasPrefix(n.Base, WhiteoutPrefix):
		target := strings.TrimPrefix(n.Base, WhiteoutPrefix)
		if err := checkElement(target); err != nil {
			return Name{}, fmt.Errorf("whiteout %q: %w", name, err)
		}
		n.Kind, n.Target = Whiteout, path.Join(n.Dir, target)
	}
	return n, nil
}

// checkElement accepts one element of a path that may be created or removed in a directory.
func checkElement(e string) error {
	switch {
	case e == "" || e == "." || e == "..":
		return invalidf("names %q, which is not an element of its directory", e)
	case strings.ContainsAny(e, "/\x00"):
		return invalidf("names %q, which is not a single element", e)
	case len(e) > MaxElement:
		return invalidf("names an element over NAME_MAX")
	}
	return nil
}

// Element checks one element (a name within one directory) before it is created or removed
// relative to a directory descriptor: the last line of defence behind Parse.
func Element(e string) error {
	if err := checkElement(e); err != nil {
		return fmt.Errorf("path element: %w", err)
	}
	return nil
}

// Link validates a hard link's target: an entry name of the same tree, never the root.
func Link(target string) (string, error) {
	clean, err := Clean(target)
	if err != nil {
		return "", fmt.Errorf("hard link target: %w", err)
	}
	if clean == "." {
		return "", invalidf("hard link to the root")
	}
	return clean, nil
}

// ErrTOCInexact says that a TOC cannot carry a name exactly: TOC JSON strings are UTF-8, and
// a JSON encoder turns other bytes into U+FFFD. A layer holding such a name must be pulled
// whole (its tar-split carries the bytes); it is not hostile.
var ErrTOCInexact = errors.New("name a TOC cannot carry exactly")

// InTOC reports whether a TOC (JSON) can carry s exactly.
func InTOC(s string) bool { return utf8.ValidString(s) }

// CheckTOC returns an error wrapping ErrTOCInexact (and errdefs.ErrNeedFull: a partial pull
// falls back to a full one, which keeps the name exactly) if a TOC cannot carry exactly the name
// of a tar entry or one of its other names (link target, xattr names).
func CheckTOC(entry string, others ...string) error {
	for _, s := range append([]string{entry}, others...) {
		if !InTOC(s) {
			return fmt.Errorf("entry %q: %q is not UTF-8: %w: %w", entry, s, ErrTOCInexact, errdefs.ErrNeedFull)
		}
	}
	return nil
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalid)...)
}
