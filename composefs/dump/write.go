package dump

import (
	"bufio"
	"fmt"
	"io"
	"strconv"

	"github.com/kura-oci/kura/composefs"
)

// Write writes the tree at root as a dump, depth first in name order, in the exact form
// composefs-info dump prints. A hard link is printed with its target's metadata, '@' before the
// mode and the target's path as payload.
func Write(w io.Writer, root *composefs.Node) error {
	bw := bufio.NewWriterSize(w, 256<<10)
	d := &dumper{w: bw}
	d.node(root, "")
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing dump: %w", err)
	}
	return nil
}

type dumper struct {
	w   *bufio.Writer
	buf []byte
}

const (
	escStandard = 0
	escEqual    = 1 << 1
	escLoneDash = 1 << 2
)

func (d *dumper) node(n *composefs.Node, path string) {
	t := n
	linkPath := ""
	if n.HardlinkTo != nil {
		if t = n.Target(); t == nil {
			t = n
		} else {
			linkPath = t.Path()
		}
	}
	b := d.buf[:0]
	if path == "" {
		b = appendEscaped(b, []byte("/"), escStandard)
	} else {
		b = appendEscaped(b, []byte(path), escStandard)
	}
	b = append(b, ' ')
	b = strconv.AppendUint(b, t.Size, 10)
	b = append(b, ' ')
	if linkPath != "" {
		b = append(b, '@')
	}
	b = strconv.AppendUint(b, uint64(t.Mode), 8)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(t.Nlink), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(t.UID), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(t.GID), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(t.Rdev), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, t.Mtime.Sec, 10)
	b = append(b, '.')
	b = strconv.AppendUint(b, uint64(t.Mtime.Nsec), 10)
	b = append(b, ' ')
	switch {
	case linkPath != "":
		b = appendEscaped(b, []byte(linkPath), escLoneDash)
	case t.Payload != "":
		b = appendEscaped(b, []byte(t.Payload), escLoneDash)
	default:
		b = append(b, '-')
	}
	b = append(b, ' ')
	if len(t.Content) > 0 {
		b = appendEscaped(b, t.Content, escLoneDash)
	} else {
		b = append(b, '-')
	}
	b = append(b, ' ')
	if t.Digest != nil {
		b = append(b, t.Digest.String()...)
	} else {
		b = append(b, '-')
	}
	for _, x := range t.Xattrs {
		b = append(b, ' ')
		b = appendEscaped(b, []byte(x.Name), escEqual)
		b = append(b, '=')
		b = appendEscaped(b, x.Value, escEqual)
	}
	b = append(b, '\n')
	d.w.Write(b)
	d.buf = b
	if n.HardlinkTo == nil {
		for _, c := range n.Children() {
			d.node(c, path+"/"+c.Name())
		}
	}
}

const hexDigits = "0123456789abcdef"

// appendEscaped escapes backslash, \n, \r, \t by name and every other non-graphic byte (and '='
// in xattrs) as \xHH; a lone "-" is written \x2d so it does not read as "unset".
func appendEscaped(b, v []byte, flags int) []byte {
	if flags&escLoneDash != 0 && len(v) == 1 && v[0] == '-' {
		return append(b, `\x2d`...)
	}
	for _, c := range v {
		switch {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '\r':
			b = append(b, `\r`...)
		case c == '\t':
			b = append(b, `\t`...)
		case c == '=' && flags&escEqual != 0:
			b = append(b, '\\', 'x', hexDigits[c>>4], hexDigits[c&15])
		case c == '=' || c > 0x20 && c < 0x7f:
			b = append(b, c)
		default:
			b = append(b, '\\', 'x', hexDigits[c>>4], hexDigits[c&15])
		}
	}
	return b
}
