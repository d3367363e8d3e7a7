// Package storeimage builds the composefs image of a stored image: its layers merged in order
// (whiteouts and opaque directories applied), every regular file of more than 64 bytes
// redirecting to its object in the store's objects/ directory with its fs-verity digest.
package storeimage

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
	"github.com/kura-oci/kura/verity"
)

// node is one path of the merged tree while layers are applied.
type node struct {
	entry    chunked.Entry
	layer    int // index of the layer that last wrote this path
	children map[string]*node
	// group is shared by the names of one hard-linked inode; nil for a lone inode.
	group *linkGroup
}

type linkGroup struct {
	first *composefs.Node
	names uint32 // names of the inode left in the merged tree
}

func (n *node) isDir() bool { return n.entry.Type == chunked.TypeDir }

// Tree merges the image's layers into a composefs tree.
func Tree(ctx context.Context, s *store.Store, img store.Image) (*composefs.Node, error) {
	root := &node{entry: chunked.Entry{Type: chunked.TypeDir, Mode: 0o755}, layer: -1, children: map[string]*node{}}
	for i, diffID := range img.Layers {
		toc, err := s.LayerTOC(ctx, diffID)
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", diffID, err)
		}
		if err := apply(root, toc, i); err != nil {
			return nil, fmt.Errorf("layer %s: %w", diffID, err)
		}
	}
	b := &builder{ctx: ctx, s: s, verity: map[digest.Digest]verity.Digest{}}
	for _, diffID := range img.Layers {
		m, err := s.VerityDigests(ctx, diffID)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for obj, v := range m {
			b.verity[obj] = v
		}
	}
	return b.convert(root)
}

// apply writes one layer's entries over the tree, as overlayfs stacks layers.
func apply(root *node, toc *chunked.TOC, li int) error {
	for _, e := range toc.Entries {
		if e.Type == chunked.TypeChunk {
			continue
		}
		name, err := layer.CleanName(e.Name)
		if err != nil {
			return err
		}
		if name == "." {
			if e.Type != chunked.TypeDir {
				return fmt.Errorf("root entry of type %q: %w", e.Type, errdefs.ErrInvalid)
			}
			root.entry, root.layer = e, li
			continue
		}
		dir, base := path.Split(name)
		parent, err := ensureDir(root, strings.TrimSuffix(dir, "/"), li)
		if err != nil {
			return fmt.Errorf("entry %q: %w", e.Name, err)
		}
		switch {
		case base == layer.OpaqueMarker:
			for k, c := range parent.children {
				if c.layer < li {
					delete(parent.children, k)
				}
			}
			continue
		case strings.HasPrefix(base, layer.WhiteoutPrefix):
			delete(parent.children, strings.TrimPrefix(base, layer.WhiteoutPrefix))
			continue
		}
		n := &node{entry: e, layer: li}
		if e.Type == chunked.TypeLink {
			target, err := lookup(root, e.Linkname)
			if err != nil {
				return fmt.Errorf("hard link %q: %w", e.Name, err)
			}
			if target.isDir() {
				return fmt.Errorf("hard link %q to directory %q: %w", e.Name, e.Linkname, errdefs.ErrInvalid)
			}
			if target.group == nil {
				target.group = &linkGroup{}
			}
			n.entry, n.group = target.entry, target.group
		}
		if old := parent.children[base]; old != nil && old.isDir() && n.isDir() {
			old.entry, old.layer = e, li // directories merge: keep the lower children
			continue
		}
		if n.isDir() {
			n.children = map[string]*node{}
		}
		parent.children[base] = n
	}
	return nil
}

// ensureDir returns the directory at dir, creating missing parents the way tar extraction does.
func ensureDir(root *node, dir string, li int) (*node, error) {
	n := root
	if dir == "" || dir == "." {
		return n, nil
	}
	for _, part := range strings.Split(dir, "/") {
		c := n.children[part]
		if c == nil {
			c = &node{entry: chunked.Entry{Type: chunked.TypeDir, Mode: 0o755}, layer: li, children: map[string]*node{}}
			n.children[part] = c
		}
		if !c.isDir() {
			return nil, fmt.Errorf("%q is not a directory: %w", part, errdefs.ErrInvalid)
		}
		n = c
	}
	return n, nil
}

func lookup(root *node, name string) (*node, error) {
	clean, err := layer.CleanName(name)
	if err != nil {
		return nil, err
	}
	n := root
	if clean == "." {
		return n, nil
	}
	for _, part := range strings.Split(clean, "/") {
		if !n.isDir() || n.children[part] == nil {
			return nil, fmt.Errorf("%q: %w", name, errdefs.ErrNotFound)
		}
		n = n.children[part]
	}
	return n, nil
}

type builder struct {
	ctx    context.Context
	s      *store.Store
	verity map[digest.Digest]verity.Digest
}

// convert turns the merged tree into composefs nodes, visiting names in sorted order so that the
// first name of a hard-linked inode (as libcomposefs walks it) carries the inode.
func (b *builder) convert(root *node) (*composefs.Node, error) {
	countNames(root)
	out, err := b.inode(root)
	if err != nil {
		return nil, err
	}
	return out, b.children(root, out)
}

// countNames counts, for each hard-linked inode, the names that survived the upper layers.
func countNames(n *node) {
	for _, c := range n.children {
		if c.group != nil {
			c.group.names++
		}
		countNames(c)
	}
}

func (b *builder) children(n *node, out *composefs.Node) error {
	names := make([]string, 0, len(n.children))
	for k := range n.children {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		c := n.children[name]
		var cn *composefs.Node
		if c.group != nil && c.group.first != nil {
			cn = &composefs.Node{HardlinkTo: c.group.first}
		} else {
			var err error
			if cn, err = b.inode(c); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if c.group != nil {
				c.group.first, cn.Nlink = cn, c.group.names
			}
		}
		if err := out.AddChild(name, cn); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if c.isDir() {
			if err := b.children(c, cn); err != nil {
				return fmt.Errorf("%s/%w", name, err)
			}
		}
	}
	return nil
}

var typeBits = map[string]uint32{
	chunked.TypeReg: unix.S_IFREG, chunked.TypeDir: unix.S_IFDIR, chunked.TypeSymlink: unix.S_IFLNK,
	chunked.TypeChar: unix.S_IFCHR, chunked.TypeBlock: unix.S_IFBLK, chunked.TypeFifo: unix.S_IFIFO,
}

// inode makes the composefs inode of one entry.
func (b *builder) inode(n *node) (*composefs.Node, error) {
	e := &n.entry
	t, ok := typeBits[e.Type]
	if !ok {
		return nil, fmt.Errorf("entry type %q: %w", e.Type, errdefs.ErrInvalid)
	}
	if e.UID < 0 || e.GID < 0 || e.UID > 1<<32-1 || e.GID > 1<<32-1 {
		return nil, fmt.Errorf("owner %d:%d: %w", e.UID, e.GID, errdefs.ErrInvalid)
	}
	out := &composefs.Node{Mode: t | uint32(e.Mode&0o7777), UID: uint32(e.UID), GID: uint32(e.GID), Nlink: 1}
	if n.isDir() {
		out = composefs.NewDir(uint32(e.Mode & 0o7777))
		out.UID, out.GID = uint32(e.UID), uint32(e.GID)
	}
	if e.ModTime != nil {
		out.Mtime = composefs.Timespec{Sec: e.ModTime.Unix(), Nsec: uint32(e.ModTime.Nanosecond())}
	}
	names := make([]string, 0, len(e.Xattrs))
	for k := range e.Xattrs {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		v, err := base64.StdEncoding.DecodeString(e.Xattrs[k])
		if err != nil {
			return nil, fmt.Errorf("xattr %q: %v: %w", k, err, errdefs.ErrInvalid)
		}
		if err := out.SetXattr(k, v); err != nil {
			return nil, err
		}
	}
	switch e.Type {
	case chunked.TypeSymlink:
		// symlink(2) makes every link 0777 whatever the tar says; the mount must show what a
		// checkout shows.
		out.Mode = unix.S_IFLNK | 0o777
		out.Payload, out.Size = e.Linkname, uint64(len(e.Linkname))
	case chunked.TypeChar, chunked.TypeBlock:
		out.Rdev = uint32(unix.Mkdev(uint32(e.Devmajor), uint32(e.Devminor)))
	case chunked.TypeReg:
		if err := b.content(out, e); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// content points a regular file at its object, or inlines it when it is small.
func (b *builder) content(out *composefs.Node, e *chunked.Entry) error {
	out.Size = uint64(e.Size)
	if e.Size == 0 {
		return nil
	}
	d, err := digest.Parse(e.Digest)
	if err != nil {
		return fmt.Errorf("digest %q: %w", e.Digest, errdefs.ErrInvalid)
	}
	if e.Size <= composefs.InlineThreshold {
		f, err := b.s.Open(b.ctx, d)
		if err != nil {
			return err
		}
		defer f.Close()
		out.Content = make([]byte, e.Size)
		if _, err := io.ReadFull(f, out.Content); err != nil {
			return fmt.Errorf("object %s: %w", d, err)
		}
		return nil
	}
	out.Payload = composefs.ObjectPath(d)
	v, ok := b.verity[d]
	if !ok {
		p, err := b.s.ObjectPath(d)
		if err != nil {
			return err
		}
		if v, err = verity.FromFile(p); err != nil {
			return fmt.Errorf("object %s: %w", d, err)
		}
		b.verity[d] = v
	}
	out.Digest = &v
	return nil
}

// Build writes the composefs image of img to w.
func Build(ctx context.Context, s *store.Store, img store.Image, w io.Writer) error {
	root, err := Tree(ctx, s, img)
	if err != nil {
		return err
	}
	return composefs.WriteImage(w, root)
}

// Ensure returns the path of img's cached composefs image in the store, building it first if it
// is missing. The image is written to a temp file and renamed, so a crash never leaves a partial
// image. The caller holds the store's shared lock.
func Ensure(ctx context.Context, s *store.Store, img store.Image) (string, error) {
	p, err := s.ComposefsPath(img.ID)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	f, err := os.CreateTemp(s.TempDir(), "composefs-")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	err = Build(ctx, s, img, f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o444)
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		return "", fmt.Errorf("building the composefs image of %s: %w", img.ID, err)
	}
	return p, nil
}
