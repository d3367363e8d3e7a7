// Package dump reads and writes the composefs-dump(5) text format: one line per inode with its
// path, metadata, payload, inline content, fs-verity digest and xattrs, as mkcomposefs --from-file
// reads it and composefs-info dump writes it.
package dump

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/verity"
)

// maxLine bounds one input line; the reference bounds the xattr part to 64 KiB and every other
// field is small, so real lines are far shorter.
const maxLine = 4 << 20

const maxXattrPart = 65535

// maxXattrsSize is libcomposefs' bound on one inode's xattr space from external input.
const maxXattrsSize = 65535 / 2

// Parse reads a dump into a tree. In strict mode (libcomposefs' CFS_PARSE_STRICT) it also rejects a
// missing final newline, device numbers on non-devices and symlinks whose size or content does not
// match their target.
func Parse(r io.Reader, strict bool) (*composefs.Node, error) {
	p := &parser{strict: strict}
	br := bufio.NewReaderSize(r, 64<<10)
	var long []byte
	lineNo := 0
	for {
		chunk, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			long = append(long, chunk...)
			if len(long) > maxLine {
				return nil, fmt.Errorf("dump line %d longer than %d bytes: %w", lineNo+1, maxLine, errdefs.ErrInvalid)
			}
			continue
		}
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("reading dump: %w", err)
		}
		line := chunk
		if long != nil {
			line = append(long, chunk...)
			long = nil
		}
		if len(line) > maxLine {
			return nil, fmt.Errorf("dump line %d longer than %d bytes: %w", lineNo+1, maxLine, errdefs.ErrInvalid)
		}
		if err == io.EOF {
			if len(line) == 0 {
				break
			}
			if strict {
				return nil, fmt.Errorf("dump line %d: missing trailing newline: %w", lineNo+1, errdefs.ErrInvalid)
			}
		} else {
			line = line[:len(line)-1]
		}
		lineNo++
		if perr := p.line(line); perr != nil {
			return nil, fmt.Errorf("dump line %d: %w", lineNo, perr)
		}
		if err == io.EOF {
			break
		}
	}
	if p.root == nil {
		return nil, fmt.Errorf("no files in dump: %w", errdefs.ErrInvalid)
	}
	if err := p.resolveHardlinks(); err != nil {
		return nil, err
	}
	return p.root, nil
}

type fixup struct {
	node   *composefs.Node
	target string
}

type parser struct {
	strict  bool
	root    *composefs.Node
	fixups  []fixup
	pending map[*composefs.Node]bool
}

func invalid(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalid)...)
}

const (
	fPath = iota
	fSize
	fMode
	fNlink
	fUID
	fGID
	fRdev
	fMtime
	fPayload
	fContent
	fDigest
	nFields
)

func (p *parser) line(line []byte) error {
	if i := bytes.IndexByte(line, 0); i >= 0 {
		return invalid("embedded NUL at offset %d", i)
	}
	var f [nFields][]byte
	rest := line
	fields := 0 // how many fixed fields the line has
	for i := range f {
		if rest == nil {
			break
		}
		fields++
		if j := bytes.IndexByte(rest, ' '); j >= 0 {
			f[i], rest = rest[:j], rest[j+1:]
		} else {
			f[i], rest = rest, nil
		}
	}
	path, err := unescape(f[fPath])
	if err != nil {
		return err
	}
	if len(path) == 0 {
		return invalid("empty path")
	}
	modeField := f[fMode]
	hardlink := len(modeField) > 0 && modeField[0] == '@'
	if hardlink {
		modeField = modeField[1:]
	}
	mode64, err := parseUint(modeField, 8)
	if err != nil {
		return err
	}
	mode := uint32(mode64)
	if !validMode(mode) {
		return invalid("invalid mode %o", mode)
	}
	n := &composefs.Node{Mode: mode}
	if err := p.add(string(path), n); err != nil {
		return err
	}
	if hardlink {
		if mode&composefs.ModeTypeMask == composefs.ModeDir {
			return invalid("%s: directories can't be hard links", path)
		}
		target, set, err := unescapeOptional(f[fPayload])
		if err != nil {
			return err
		}
		if !set {
			return invalid("%s: hard link without target", path)
		}
		// Mark it as a link until the target is known, so it cannot become a parent.
		n.HardlinkTo = n
		p.fixups = append(p.fixups, fixup{node: n, target: string(target)})
		return nil
	}
	size, err := parseUint(f[fSize], 10)
	if err != nil {
		return err
	}
	nlink, err := parseUint(f[fNlink], 10)
	if err != nil {
		return err
	}
	uid, err := parseUint(f[fUID], 10)
	if err != nil {
		return err
	}
	gid, err := parseUint(f[fGID], 10)
	if err != nil {
		return err
	}
	rdev, err := parseUint(f[fRdev], 10)
	if err != nil {
		return err
	}
	secField, nsecField, _ := bytes.Cut(f[fMtime], []byte{'.'})
	sec, err := parseUint(secField, 10)
	if err != nil {
		return err
	}
	nsec, err := parseUint(nsecField, 10)
	if err != nil {
		return err
	}
	payload, hasPayload, err := unescapeOptional(f[fPayload])
	if err != nil {
		return err
	}
	content, hasContent, err := unescapeOptional(f[fContent])
	if err != nil {
		return err
	}
	if hasContent && uint64(len(content)) != size {
		return invalid("content of %d bytes, size says %d", len(content), size)
	}
	digestField, hasDigest, err := unescapeOptional(f[fDigest])
	if err != nil {
		return err
	}
	typ := mode & composefs.ModeTypeMask
	n.Nlink = uint32(nlink)
	n.UID = uint32(uid)
	n.GID = uint32(gid)
	n.Mtime = composefs.Timespec{Sec: int64(sec), Nsec: uint32(nsec)}
	if typ == composefs.ModeChar || typ == composefs.ModeBlock {
		n.Rdev = uint32(rdev)
	} else if p.strict && rdev != 0 {
		return invalid("device number %d on a non-device", rdev)
	}
	if bytes.IndexByte(payload, 0) >= 0 {
		return invalid("payload contains NUL")
	}
	if len(payload) > composefs.MaxPayloadLen {
		return invalid("payload of %d bytes, at most %d allowed", len(payload), composefs.MaxPayloadLen)
	}
	if typ == composefs.ModeSymlink {
		if !hasPayload || len(payload) == 0 {
			return invalid("symlink without target")
		}
		n.Payload = string(payload)
		n.Size = uint64(len(payload))
		if p.strict {
			if size != uint64(len(payload)) {
				return invalid("symlink size %d, target has %d bytes", size, len(payload))
			}
			if len(content) > 0 {
				return invalid("symlink with content")
			}
		}
	} else {
		n.Size = size
		n.Payload = string(payload)
		if hasContent {
			if len(content) > composefs.MaxInlineContent {
				return invalid("inline content of %d bytes, at most %d allowed", len(content), composefs.MaxInlineContent)
			}
			if typ == composefs.ModeRegular && len(content) > 0 {
				n.Content = content
			}
			n.Size = uint64(len(content))
		}
	}
	// mkcomposefs reads an empty digest field as a digest of uninitialised memory. An empty field
	// written out is refused; a line that ends before it (accepted by the reference when not
	// strict) is refused only where the digest would be written, in a file's metacopy xattr.
	external := typ == composefs.ModeRegular && n.Content == nil && n.Size > 0
	if hasDigest && len(digestField) == 0 && (fields > fDigest || external) {
		return invalid("empty digest field (want \"-\" or 64 hex digits)")
	}
	if hasDigest && len(digestField) > 0 {
		d, err := verity.ParseDigest(string(digestField))
		if err != nil {
			return err
		}
		n.Digest = &d
	}
	if len(rest) > maxXattrPart {
		return invalid("xattrs of %d bytes, at most %d allowed", len(rest), maxXattrPart)
	}
	// Xattrs are set one by one like lcfs_node_set_xattr: a repeated name replaces the value, and
	// the running space account is checked after every one.
	index := map[string]int{}
	account := 0
	for len(rest) > 0 {
		var x []byte
		if j := bytes.IndexByte(rest, ' '); j >= 0 {
			x, rest = rest[:j], rest[j+1:]
		} else {
			x, rest = rest, nil
		}
		k, v, ok := bytes.Cut(x, []byte{'='})
		if !ok {
			return invalid("xattr without '='")
		}
		key, err := unescape(k)
		if err != nil {
			return err
		}
		value, err := unescape(v)
		if err != nil {
			return err
		}
		if err := composefs.CheckXattr(string(key), value); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		i, dup := index[string(key)]
		if dup {
			account -= 7 + len(key) + len(n.Xattrs[i].Value)
			if len(n.Xattrs) == 1 {
				account = 0
			}
		}
		entry := 7 + len(key) + len(value)
		if account == 0 {
			entry += 12
		}
		if account+entry > maxXattrsSize {
			return invalid("%s: xattrs of more than %d bytes", path, maxXattrsSize)
		}
		account += entry
		if dup {
			n.Xattrs[i].Value = value
		} else {
			index[string(key)] = len(n.Xattrs)
			n.Xattrs = append(n.Xattrs, composefs.Xattr{Name: string(key), Value: value})
		}
	}
	return nil
}

func validMode(mode uint32) bool {
	switch mode & composefs.ModeTypeMask {
	case composefs.ModeRegular, composefs.ModeDir, composefs.ModeSymlink, composefs.ModeBlock,
		composefs.ModeChar, composefs.ModeSocket, composefs.ModeFIFO:
		return true
	}
	return false
}

func (p *parser) add(path string, n *composefs.Node) error {
	if path == "/" {
		if n.Mode&composefs.ModeTypeMask != composefs.ModeDir {
			return invalid("root must be a directory")
		}
		if p.root != nil {
			return invalid("more than one root")
		}
		p.root = n
		return nil
	}
	if p.root == nil {
		return invalid("%s before the root", path)
	}
	return p.root.AddPath(path, n)
}

// resolveHardlinks points every hard link at its target once all files are known; like the
// reference it resolves the last one first, which only matters for which error is reported.
func (p *parser) resolveHardlinks() error {
	for i := len(p.fixups) - 1; i >= 0; i-- {
		fx := p.fixups[i]
		t := p.root.LookupPath(fx.target)
		if t == nil {
			return invalid("%s: no hard link target %s", fx.node.Path(), fx.target)
		}
		if t == fx.node {
			return invalid("%s: hard link to itself", fx.node.Path())
		}
		fx.node.HardlinkTo = t
	}
	for _, fx := range p.fixups {
		t := fx.node.Target()
		if t == nil {
			return invalid("%s: hard link cycle", fx.node.Path())
		}
		if t.IsDir() {
			return invalid("%s: hard link to a directory", fx.node.Path())
		}
	}
	return nil
}

// parseUint parses like strtoull: optional leading white space and sign, digits in base, with
// overflow saturating and a negative value wrapping, as the reference accepts them.
func parseUint(b []byte, base uint64) (uint64, error) {
	s := b
	for len(s) > 0 && (s[0] == ' ' || (s[0] >= '\t' && s[0] <= '\r')) {
		s = s[1:]
	}
	neg := false
	if len(s) > 0 && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if len(s) == 0 {
		return 0, invalid("invalid integer %q", b)
	}
	var v uint64
	overflow := false
	for _, c := range s {
		d := uint64(c - '0')
		if c < '0' || d >= base {
			return 0, invalid("invalid integer %q", b)
		}
		if v > (^uint64(0)-d)/base {
			overflow = true
		}
		v = v*base + d
	}
	if overflow {
		return ^uint64(0), nil
	}
	if neg {
		v = -v
	}
	return v, nil
}

func unescapeOptional(b []byte) ([]byte, bool, error) {
	if len(b) == 1 && b[0] == '-' {
		return nil, false, nil
	}
	v, err := unescape(b)
	return v, true, err
}

func unescape(b []byte) ([]byte, error) {
	if bytes.IndexByte(b, '\\') < 0 {
		return append([]byte(nil), b...), nil
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		if i >= len(b) {
			return nil, invalid("no character after escape")
		}
		switch b[i] {
		case '\\':
			out = append(out, '\\')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'x':
			if i+2 >= len(b) {
				return nil, invalid("no hex digits after \\x")
			}
			var v [1]byte
			if _, err := hex.Decode(v[:], b[i+1:i+3]); err != nil {
				return nil, invalid("invalid hex escape %q", b[i-1:i+3])
			}
			out = append(out, v[0])
			i += 2
		default:
			return nil, invalid("unsupported escape \\%c", b[i])
		}
	}
	return out, nil
}
