package composefs

import (
	"bytes"
	"slices"
)

// DeltaTree returns the tree of what layer changes in base: written WithStacking and mounted
// above base's image in one overlay (mount.WithBase), its image shows exactly layer, while the
// inodes and directories it shares with base are base's, in the page cache once for every
// layer stacked on it. Both trees are per-layer trees as the writer takes them (escaped
// whiteouts, no HidesLower). The result holds, with their ancestor directories (attributes
// from layer):
//   - each non-directory of layer that base has not at the same path with the same inode
//     (type, mode, owner, mtime, size, content or object, link target, device, xattrs, link
//     count), and every name of each inode with more than one, so that its names stay one inode;
//   - each escaped whiteout of layer: the writer marks its directory for the overlay above;
//   - each directory of layer whose own attributes differ from base's, and whole each directory
//     of layer that base has not as a directory (overlayfs merges directories only);
//   - a whiteout (HidesLower) for each entry of base that layer has not.
//
// nodes is the number of nodes in the result, to weigh it against layer's whole tree. The
// overlay looks the absolute redirect of a changed file up in base before the data-only layers,
// where base's 00..ff whiteout stubs end the lookup; a base whose root has an entry of its own
// named like an object directory could hold a file at that path, which the lookup would take
// for the data. Such a base is not stacked on: root is nil.
func DeltaTree(layer, base *Node) (root *Node, nodes int) {
	for _, c := range base.children {
		if isStubName(c.name) {
			return nil, 0
		}
	}
	d := &delta{copies: map[*Node]*Node{}, linked: map[*Node]bool{}}
	d.markLinks(layer)
	root = d.copyOf(layer)
	d.dir(layer, base, root)
	return root, d.nodes + 1
}

type delta struct {
	copies map[*Node]*Node // layer's inodes with more than one name → their copy
	linked map[*Node]bool  // layer's inodes that hard links name
	nodes  int
}

// markLinks finds the inodes hard links of layer name.
func (d *delta) markLinks(n *Node) {
	for _, c := range n.children {
		if c.HardlinkTo != nil {
			if t := c.Target(); t != nil {
				d.linked[t] = true
			}
		} else if c.IsDir() {
			d.markLinks(c)
		}
	}
}

// dir adds to out (the copy of layer's directory l) the entries of l that base's directory b
// lacks or has otherwise, and hides those of b that l lacks.
func (d *delta) dir(l, b, out *Node) {
	for _, c := range l.children {
		bc := b.Lookup(c.name)
		switch {
		case c.IsDir() && bc != nil && bc.IsDir():
			sub := d.copyOf(c)
			d.dir(c, bc, sub)
			if len(sub.children) > 0 || !sameDir(c, bc) {
				d.add(out, c.name, sub)
			}
		case c.IsDir():
			d.add(out, c.name, d.subtree(c))
		case bc == nil || d.multiple(c) || isWhiteout(c) || !sameInode(c, bc):
			d.add(out, c.name, d.copyOf(c))
		}
	}
	for _, bc := range b.children {
		if l.Lookup(bc.name) == nil {
			d.add(out, bc.name, &Node{Mode: ModeChar, Nlink: 1, HidesLower: true})
		}
	}
}

// subtree copies the directory l and everything below it.
func (d *delta) subtree(l *Node) *Node {
	out := d.copyOf(l)
	for _, c := range l.children {
		if c.IsDir() {
			d.add(out, c.name, d.subtree(c))
		} else {
			d.add(out, c.name, d.copyOf(c))
		}
	}
	return out
}

func (d *delta) add(parent *Node, name string, n *Node) {
	// Names come from a valid tree, each once: AddChild cannot fail.
	if err := parent.AddChild(name, n); err != nil {
		panic(err)
	}
	d.nodes++
}

// copyOf copies one node of layer without its entries. The names of an inode with more than
// one share one copy: the first name met carries it, the others are hard links to it.
func (d *delta) copyOf(n *Node) *Node {
	t := n.Target()
	if t == nil {
		t = n // a cycle: the writer refuses the tree
	}
	if c := d.copies[t]; c != nil {
		return &Node{HardlinkTo: c}
	}
	c := &Node{Mode: t.Mode, UID: t.UID, GID: t.GID, Nlink: t.Nlink, Rdev: t.Rdev, Mtime: t.Mtime,
		Size: t.Size, Payload: t.Payload, Content: t.Content, Digest: t.Digest, Xattrs: t.Xattrs}
	if d.multiple(n) {
		d.copies[t] = c
	}
	return c
}

// multiple says whether n is, or names, an inode with more than one name.
func (d *delta) multiple(n *Node) bool {
	return n.HardlinkTo != nil || d.linked[n] || !n.IsDir() && n.Nlink > 1
}

func isWhiteout(n *Node) bool { return n.Mode&ModeTypeMask == ModeChar && n.Rdev == 0 }

// sameDir says whether two directories have the same attributes (not entries).
func sameDir(a, b *Node) bool {
	return a.Mode == b.Mode && a.UID == b.UID && a.GID == b.GID && a.Mtime == b.Mtime && sameXattrs(a.Xattrs, b.Xattrs)
}

// sameInode says whether two non-directory inodes are alike in every attribute a reader sees.
func sameInode(a, b *Node) bool {
	if b.HardlinkTo != nil || b.IsDir() {
		return false
	}
	return a.Mode == b.Mode && a.UID == b.UID && a.GID == b.GID && a.Nlink == b.Nlink && a.Rdev == b.Rdev &&
		a.Mtime == b.Mtime && a.Size == b.Size && a.Payload == b.Payload && bytes.Equal(a.Content, b.Content) &&
		(a.Digest == nil) == (b.Digest == nil) && (a.Digest == nil || *a.Digest == *b.Digest) &&
		sameXattrs(a.Xattrs, b.Xattrs)
}

func sameXattrs(a, b []Xattr) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		i := slices.IndexFunc(b, func(y Xattr) bool { return y.Name == x.Name })
		if i < 0 || !bytes.Equal(b[i].Value, x.Value) {
			return false
		}
	}
	return true
}
