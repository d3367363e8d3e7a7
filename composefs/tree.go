// Package composefs owns the composefs image: an in-memory tree of inodes (metadata only, file data
// referenced by object path and fs-verity digest), the EROFS writer that turns it into an image
// byte-identical to libcomposefs' mkcomposefs, and a reader that turns such an image back into a tree.
package composefs

import (
	"fmt"
	"sort"
	"strings"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layername"
	"github.com/kura-oci/kura/verity"
)

// File type bits of Node.Mode (as in stat(2)).
const (
	ModeTypeMask = 0o170000
	ModeSocket   = 0o140000
	ModeSymlink  = 0o120000
	ModeRegular  = 0o100000
	ModeBlock    = 0o060000
	ModeDir      = 0o040000
	ModeChar     = 0o020000
	ModeFIFO     = 0o010000
)

// Limits the reference enforces; inputs beyond them are rejected.
const (
	MaxNameLen       = layername.MaxElement // one path component
	MaxPayloadLen    = 4095                 // symlink target or redirect path (PATH_MAX - 1)
	MaxInlineContent = 5000                 // inline content a dump or tree may carry
	// InlineThreshold: mkcomposefs stores regular files of 1..64 bytes inline, larger ones as objects.
	InlineThreshold = 64
	MaxXattrNameLen = 255
	// maxXattrsSize bounds the xattrs of one inode as libcomposefs accounts them (UINT16_MAX/2).
	maxXattrsSize = 65535 / 2
)

// Timespec is a modification time.
type Timespec struct {
	Sec  int64
	Nsec uint32
}

// Xattr is one extended attribute.
type Xattr struct {
	Name  string
	Value []byte
}

// Node is one inode of a composefs tree, or (with HardlinkTo set) another name for one.
//
// For a regular file, either Content holds the whole file (inline, at most MaxInlineContent bytes,
// Size == len(Content)), or Payload names its object in the data directory ("xx/rest") and Digest,
// when set, is the object's fs-verity digest. For a symlink Payload is the target.
type Node struct {
	Mode    uint32 // type and permission bits
	UID     uint32
	GID     uint32
	Nlink   uint32 // for non-directories; directories get 2 + subdirectories
	Rdev    uint32 // device number for block and character devices
	Mtime   Timespec
	Size    uint64
	Payload string
	Content []byte
	Digest  *verity.Digest
	Xattrs  []Xattr

	// HardlinkTo makes this entry a hard link to another node of the same tree; the other
	// fields are then ignored.
	HardlinkTo *Node

	// HidesLower, on a 0/0 character device of an image written WithStacking, makes it
	// overlayfs's own whiteout: it hides the same path of the image below instead of being an
	// entry of this one (every other 0/0 character device is an escaped whiteout, an entry
	// that overlayfs shows to the overlay stacked above).
	HidesLower bool

	name     string
	parent   *Node
	children []*Node // sorted bytewise by name
}

// NewDir returns a directory node with the given permissions.
func NewDir(perm uint32) *Node { return &Node{Mode: ModeDir | perm&0o7777, Nlink: 2} }

// IsDir reports whether n is a directory (and not a hard link entry).
func (n *Node) IsDir() bool { return n.HardlinkTo == nil && n.Mode&ModeTypeMask == ModeDir }

// Type returns the file type bits of the node (of its target for a hard link).
func (n *Node) Type() uint32 { return n.Target().Mode & ModeTypeMask }

// Name returns the name under which n was added to its parent ("" for the root).
func (n *Node) Name() string { return n.name }

// Parent returns the directory n was added to, or nil.
func (n *Node) Parent() *Node { return n.parent }

// Children returns the entries of a directory, sorted by name. Do not modify the slice.
func (n *Node) Children() []*Node { return n.children }

// Target follows hard links to the node that carries the inode. It returns n itself when n is
// not a hard link, and nil on a cycle.
func (n *Node) Target() *Node {
	t := n
	for i := 0; t.HardlinkTo != nil; i++ {
		t = t.HardlinkTo
		if t == n || i > 1<<16 {
			return nil
		}
	}
	return t
}

// CountNodes returns the number of nodes in the tree at root, root and hard link entries
// included.
func CountNodes(root *Node) int {
	k := 1
	for _, c := range root.children {
		k += CountNodes(c)
	}
	return k
}

// Path returns the absolute path of n in its tree ("/" for the root).
func (n *Node) Path() string {
	if n.parent == nil {
		return "/"
	}
	var parts []string
	for p := n; p.parent != nil; p = p.parent {
		parts = append(parts, p.name)
	}
	var b strings.Builder
	for i := len(parts) - 1; i >= 0; i-- {
		b.WriteByte('/')
		b.WriteString(parts[i])
	}
	return b.String()
}

// ValidName checks one path component, by the rules every entry name follows (package
// layername).
func ValidName(name string) error {
	return layername.Element(name)
}

func (n *Node) search(name string) (int, bool) {
	i := sort.Search(len(n.children), func(i int) bool { return n.children[i].name >= name })
	return i, i < len(n.children) && n.children[i].name == name
}

// Lookup returns the child called name, or nil.
func (n *Node) Lookup(name string) *Node {
	// Entries usually arrive sorted, so look at the end first.
	if k := len(n.children); k > 0 && n.children[k-1].name == name {
		return n.children[k-1]
	}
	if i, ok := n.search(name); ok {
		return n.children[i]
	}
	return nil
}

// AddChild adds child under name to the directory n.
func (n *Node) AddChild(name string, child *Node) error {
	if !n.IsDir() {
		return fmt.Errorf("adding %q to %s: not a directory: %w", name, n.Path(), errdefs.ErrInvalid)
	}
	if err := ValidName(name); err != nil {
		return err
	}
	if child.parent != nil || child == n {
		return fmt.Errorf("adding %q: node is already in a tree: %w", name, errdefs.ErrInvalid)
	}
	if k := len(n.children); k == 0 || n.children[k-1].name < name {
		n.children = append(n.children, child)
	} else {
		i, ok := n.search(name)
		if ok {
			return fmt.Errorf("%s/%s: %w", strings.TrimSuffix(n.Path(), "/"), name, errdefs.ErrAlreadyExists)
		}
		n.children = append(n.children, nil)
		copy(n.children[i+1:], n.children[i:])
		n.children[i] = child
	}
	child.name = name
	child.parent = n
	return nil
}

// RemoveChild removes the entry called name from the directory n and reports whether it was
// there. A hard link to the removed node elsewhere in the tree is the caller's to remove.
func (n *Node) RemoveChild(name string) bool {
	i, ok := n.search(name)
	if !ok {
		return false
	}
	c := n.children[i]
	n.children = append(n.children[:i], n.children[i+1:]...)
	c.name, c.parent = "", nil
	return true
}

// LookupPath finds the node at an absolute or relative path below root ("/" is root itself).
func (root *Node) LookupPath(path string) *Node {
	n := root
	for _, c := range strings.Split(path, "/") {
		if c == "" {
			continue
		}
		if n = n.Lookup(c); n == nil {
			return nil
		}
	}
	return n
}

// AddPath adds n at path below root; the parent directory must exist.
func (root *Node) AddPath(path string, n *Node) error {
	path = strings.TrimLeft(path, "/")
	dir, name := "", path
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		dir, name = path[:i], path[i+1:]
	}
	parent := root.LookupPath(dir)
	if parent == nil {
		return fmt.Errorf("adding /%s: parent directory missing: %w", path, errdefs.ErrInvalid)
	}
	if err := parent.AddChild(name, n); err != nil {
		return fmt.Errorf("adding /%s: %w", path, err)
	}
	return nil
}

// Xattr returns the value of the named xattr and whether it is set.
func (n *Node) Xattr(name string) ([]byte, bool) {
	for _, x := range n.Xattrs {
		if x.Name == name {
			return x.Value, true
		}
	}
	return nil, false
}

// SetXattr sets or replaces an xattr, enforcing the reference's limits on names and total size.
func (n *Node) SetXattr(name string, value []byte) error {
	if err := CheckXattr(name, value); err != nil {
		return err
	}
	size := xattrAccount(n.Xattrs, name, len(value))
	if size > maxXattrsSize {
		return fmt.Errorf("xattrs of %d bytes, at most %d allowed: %w", size, maxXattrsSize, errdefs.ErrInvalid)
	}
	for i := range n.Xattrs {
		if n.Xattrs[i].Name == name {
			n.Xattrs[i].Value = value
			return nil
		}
	}
	n.Xattrs = append(n.Xattrs, Xattr{Name: name, Value: value})
	return nil
}

// CheckXattr checks an xattr name (1..255 bytes, no NUL) and value (at most 64 KiB).
func CheckXattr(name string, value []byte) error {
	if name == "" || len(name) > MaxXattrNameLen {
		return fmt.Errorf("xattr name of %d bytes, want 1..%d: %w", len(name), MaxXattrNameLen, errdefs.ErrInvalid)
	}
	if strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("xattr name %q contains NUL: %w", name, errdefs.ErrInvalid)
	}
	if len(value) > 65535 {
		return fmt.Errorf("xattr %s value of %d bytes, at most 65535 allowed: %w", name, len(value), errdefs.ErrInvalid)
	}
	return nil
}

// xattrAccount is libcomposefs' accounting of an inode's xattr space after setting name to a value
// of valueLen bytes: a 12-byte header plus 7 + name + value per entry (worst-case alignment).
func xattrAccount(xs []Xattr, name string, valueLen int) int {
	size := 12 + 7 + len(name) + valueLen
	for _, x := range xs {
		if x.Name != name {
			size += 7 + len(x.Name) + len(x.Value)
		}
	}
	return size
}
