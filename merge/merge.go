// Package merge owns the OCI layer-merge rules: it stacks an image's layers into the one
// tree that both a checkout materialises and a composefs mount shows, so the two cannot
// disagree. The rules are written out in docs/design.md ("Merging layers").
package merge

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/layername"
)

// Node is one path of the merged tree.
type Node struct {
	// Entry is the entry that last wrote this path; for a hard link, the entry of the inode it
	// names (type, metadata, content), so every name of an inode reads the same. Entry.Name is
	// the name in its own layer; paths come from the tree (Walk).
	Entry layerfs.Entry
	// Children of a directory, by name; nil for anything else.
	Children map[string]*Node
	// Inode is shared by the names of one hard-linked inode; nil for a lone inode.
	Inode *Inode
	// layer is the index of the layer whose entry this is (-1: implied, never written).
	layer int
	// seen is the last layer with an entry at or below this path.
	seen int
}

// Inode is one hard-linked inode of the merged tree.
type Inode struct {
	// Names counts its names in the merged tree; Walk sets it.
	Names uint32
}

// Implied reports whether no entry gave n: a directory that names below it need (its entry is
// implied(): 0755, root:root, the epoch), or the root of a tree whose layers never name it.
func (n *Node) Implied() bool { return n.layer < 0 }

// IsDir reports whether n is a directory.
func (n *Node) IsDir() bool { return n.Entry.Type == layerfs.TypeDir }

// Tree is the merge of the layers applied so far.
type Tree struct {
	Root   *Node
	layers int
}

// epoch is the time of what no entry dates: implied directories, entries without a time.
var epoch = time.Unix(0, 0).UTC()

// implied is the entry of a directory that a layer's names need but no entry of the merged
// tree gives: 0755 root:root, as tar extraction makes it, dated the epoch.
func implied() layerfs.Entry {
	return layerfs.Entry{Type: layerfs.TypeDir, Mode: 0o755, ModTime: &epoch}
}

// New returns an empty tree: a root directory as implied() describes.
func New() *Tree {
	return &Tree{Root: &Node{Entry: implied(), Children: map[string]*Node{}, layer: -1, seen: -1}}
}

// Apply merges the next layer, given by its entries, over the tree.
//
// Entries apply in layer (tar) order. A whiteout or an opaque marker hides only what lower layers
// put there: an entry of the same layer survives it whatever the order (OCI image spec, "Whiteouts").
func (t *Tree) Apply(entries []layerfs.Entry) error {
	li := t.layers
	t.layers++
	for i := range entries {
		e := &entries[i]
		if err := t.entry(e, li); err != nil {
			return fmt.Errorf("entry %q: %w", e.Name, err)
		}
	}
	return nil
}

func (t *Tree) entry(e *layerfs.Entry, li int) error {
	name, err := layername.Parse(e.Name)
	if err != nil {
		return err
	}
	if name.Path == "." {
		if e.Type != layerfs.TypeDir {
			return fmt.Errorf("the root is a %q, not a directory: %w", e.Type, errdefs.ErrInvalid)
		}
		t.Root.Entry, t.Root.layer, t.Root.seen = clean(*e), li, li
		return checkOwner(&t.Root.Entry)
	}
	parent, err := t.dir(name.Dir, li)
	if err != nil {
		return err
	}
	switch name.Kind {
	case layername.Opaque:
		prune(parent, li)
		return nil
	case layername.Whiteout:
		return whiteout(parent, lastElement(name.Target), li)
	}
	n := &Node{Entry: clean(*e), layer: li, seen: li}
	if e.Type == layerfs.TypeLink {
		if err := t.link(n, e); err != nil {
			return err
		}
	}
	if err := checkOwner(&n.Entry); err != nil {
		return err
	}
	if old := parent.Children[name.Base]; old != nil && old.IsDir() && n.IsDir() {
		old.Entry, old.layer, old.seen = n.Entry, li, li // directories merge: lower children stay
		return nil
	}
	if n.IsDir() {
		n.Children = map[string]*Node{}
	}
	parent.Children[name.Base] = n
	return nil
}

func lastElement(p string) string {
	return p[strings.LastIndexByte(p, '/')+1:]
}

// whiteout deletes what lower layers put at base in parent. An entry of this layer at base
// stays; a directory this layer wrote into keeps only this layer's contents.
func whiteout(parent *Node, base string, li int) error {
	if err := layername.Element(base); err != nil {
		return err
	}
	c := parent.Children[base]
	switch {
	case c == nil:
	case c.seen < li:
		delete(parent.Children, base)
	default:
		prune(c, li)
		if c.layer < li { // its own entry was a lower layer's: only this layer's contents imply it
			c.Entry, c.layer = implied(), -1
		}
	}
	return nil
}

// prune deletes from the directory n everything lower layers than li put there.
func prune(n *Node, li int) {
	for k, c := range n.Children {
		if c.seen < li {
			delete(n.Children, k)
		} else if c.IsDir() {
			prune(c, li)
		}
	}
}

// dir returns the directory at path dir, creating the missing ones as implied directories, and
// marks the way as seen by layer li. A path through anything but a directory is refused: it
// would write below a file, or through a symlink, whose target the merge does not follow.
func (t *Tree) dir(dir string, li int) (*Node, error) {
	n := t.Root
	n.seen = li
	if dir == "." {
		return n, nil
	}
	for _, part := range strings.Split(dir, "/") {
		c := n.Children[part]
		if c == nil {
			c = &Node{Entry: implied(), Children: map[string]*Node{}, layer: -1}
			n.Children[part] = c
		}
		if !c.IsDir() {
			return nil, fmt.Errorf("%q is a %q, not a directory: %w", part, c.Entry.Type, errdefs.ErrInvalid)
		}
		c.seen = li
		n = c
	}
	return n, nil
}

// link makes n a name of the inode its entry's link target names in the tree as merged so far.
func (t *Tree) link(n *Node, e *layerfs.Entry) error {
	target, err := layername.Link(e.Linkname)
	if err != nil {
		return err
	}
	tn := t.Root
	for _, part := range strings.Split(target, "/") {
		if tn = tn.Children[part]; tn == nil {
			return fmt.Errorf("hard link target %q is not in the tree: %w", e.Linkname, errdefs.ErrInvalid)
		}
	}
	if tn.IsDir() {
		return fmt.Errorf("hard link to the directory %q: %w", e.Linkname, errdefs.ErrInvalid)
	}
	if tn.Inode == nil {
		tn.Inode = &Inode{}
	}
	n.Entry, n.Inode = tn.Entry, tn.Inode
	return nil
}

// maxID is the largest owner Linux can give a file: (uid_t)-1 means "no change" to chown.
const maxID = 1<<32 - 2

// checkOwner refuses owners a file cannot have, rather than truncating them.
func checkOwner(e *layerfs.Entry) error {
	if e.UID < 0 || e.GID < 0 || e.UID > maxID || e.GID > maxID {
		return fmt.Errorf("owner %d:%d is not a Linux uid:gid: %w", e.UID, e.GID, errdefs.ErrInvalid)
	}
	return nil
}

// clean returns the entry as the merged tree keeps it: without the xattrs that configure
// overlayfs (an image must not forge whiteouts, redirects or metacopy data in the mount or
// in a checkout used as a layer), and dated the epoch if it has no time.
func clean(e layerfs.Entry) layerfs.Entry {
	for k := range e.Xattrs {
		if IsOverlayXattr(k) {
			x := make(map[string][]byte, len(e.Xattrs))
			for k, v := range e.Xattrs {
				if !IsOverlayXattr(k) {
					x[k] = v
				}
			}
			e.Xattrs = x
			break
		}
	}
	if e.ModTime == nil {
		e.ModTime = &epoch
	}
	return e
}

// IsOverlayXattr reports whether an xattr name belongs to overlayfs (trusted.overlay.* and, for
// unprivileged mounts, user.overlay.*). The merge drops them.
func IsOverlayXattr(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "user.overlay.")
}

// Walk calls fn for every path of the tree, the root (".") first, then each directory's
// children in sorted order, a directory before its contents. It first counts the names of each
// hard-linked inode (Inode.Names), so fn may rely on them; the first path of an inode that fn
// sees is the one to create it under.
func (t *Tree) Walk(fn func(path string, n *Node) error) error {
	countNames(t.Root)
	if err := fn(".", t.Root); err != nil {
		return err
	}
	return walk("", t.Root, fn)
}

func countNames(root *Node) {
	eachInode(root, func(i *Inode) { i.Names = 0 })
	eachInode(root, func(i *Inode) { i.Names++ })
}

// eachInode calls fn once per hard-linked name below n.
func eachInode(n *Node, fn func(*Inode)) {
	for _, c := range n.Children {
		if c.Inode != nil {
			fn(c.Inode)
		}
		if c.IsDir() {
			eachInode(c, fn)
		}
	}
}

func walk(prefix string, n *Node, fn func(string, *Node) error) error {
	names := make([]string, 0, len(n.Children))
	for k := range n.Children {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		c := n.Children[k]
		p := prefix + k
		if err := fn(p, c); err != nil {
			return err
		}
		if c.IsDir() {
			if err := walk(p+"/", c, fn); err != nil {
				return err
			}
		}
	}
	return nil
}
