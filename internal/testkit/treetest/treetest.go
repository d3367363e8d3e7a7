// Package treetest snapshots a directory tree (type, mode, owner, time, size, content digest, link
// target, device number, link count, xattrs, hard-link groups) so that tests compare a checkout with
// a reference, a mount with a checkout, or a tree before and after something that must not touch it.
// Only tests import it.
package treetest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Node is what a snapshot records of one path.
type Node struct {
	Type    string // reg, dir, symlink, dev, fifo, socket
	Mode    uint32 // permission, setuid, setgid and sticky bits; 0 for a symlink, whose mode means nothing
	UID     uint32
	GID     uint32
	Mtime   int64  // nanoseconds since the epoch
	Size    int64  // of a regular file or a directory (whose size tells that entries came and went)
	Content string // sha256 (hex) of a regular file
	Link    string // symlink target
	Rdev    uint64 // device number of a device
	Nlink   uint64 // link count, but of a directory (which counts its subdirectories)
	Xattrs  string // name=hex(value) pairs, sorted, joined by ";"
}

// Tree is a snapshot: every path by its slash-separated name relative to the root ("." for the root
// itself), and the hard-link groups of regular files (each path of a group mapped to the group's
// sorted paths, joined by ",").
type Tree struct {
	Nodes map[string]Node
	Links map[string]string
}

type config struct{ keepXattr func(string) bool }

// Option changes what Snapshot records.
type Option func(*config)

// XattrPrefix records only the xattrs whose names start with prefix (a mount adds its own in
// other namespaces). By default every xattr but security.selinux, which the host labels, is kept.
func XattrPrefix(prefix string) Option {
	return func(c *config) { c.keepXattr = func(name string) bool { return strings.HasPrefix(name, prefix) } }
}

// Snapshot records the tree under root; it fails the test if it cannot read it.
func Snapshot(t testing.TB, root string, opts ...Option) Tree {
	t.Helper()
	c := config{keepXattr: func(name string) bool { return name != "security.selinux" }}
	for _, o := range opts {
		o(&c)
	}
	tr := Tree{Nodes: map[string]Node{}, Links: map[string]string{}}
	inodes := map[uint64][]string{}
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		n, ino, err := node(p, c)
		if err != nil {
			return err
		}
		if n.Type == "reg" {
			inodes[ino] = append(inodes[ino], rel)
		}
		tr.Nodes[rel] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, paths := range inodes {
		if len(paths) > 1 {
			sort.Strings(paths)
			for _, p := range paths {
				tr.Links[p] = strings.Join(paths, ",")
			}
		}
	}
	return tr
}

// node reads what Node records of p, and its inode number.
func node(p string, c config) (Node, uint64, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return Node{}, 0, err
	}
	n := Node{Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid, Mtime: st.Mtim.Nano(), Nlink: uint64(st.Nlink)}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		n.Type, n.Size = "reg", st.Size
		sum, err := digest(p)
		if err != nil {
			return Node{}, 0, err
		}
		n.Content = sum
	case unix.S_IFDIR:
		n.Type, n.Size, n.Nlink = "dir", st.Size, 0
	case unix.S_IFLNK:
		n.Type, n.Mode = "symlink", 0
		n.Link, _ = os.Readlink(p)
	case unix.S_IFCHR, unix.S_IFBLK:
		n.Type, n.Rdev = "dev", uint64(st.Rdev)
	case unix.S_IFIFO:
		n.Type = "fifo"
	case unix.S_IFSOCK:
		n.Type = "socket"
	}
	n.Xattrs = xattrs(p, c.keepXattr)
	return n, st.Ino, nil
}

func digest(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func xattrs(p string, keep func(string) bool) string {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz == 0 {
		return ""
	}
	buf := make([]byte, sz)
	sz, _ = unix.Llistxattr(p, buf)
	var out []string
	for _, k := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if k == "" || !keep(k) {
			continue
		}
		v := make([]byte, 64<<10)
		n, err := unix.Lgetxattr(p, k, v)
		if err != nil {
			continue
		}
		out = append(out, k+"="+hex.EncodeToString(v[:n]))
	}
	sort.Strings(out)
	return strings.Join(out, ";")
}

// String renders the tree one path a line, sorted, every field but the times (which reading
// updates on some mounts) and the hard-link groups: for proving that nothing changed under a root.
func (tr Tree) String() string {
	paths := make([]string, 0, len(tr.Nodes))
	for p := range tr.Nodes {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var sb strings.Builder
	for _, p := range paths {
		n := tr.Nodes[p]
		fmt.Fprintf(&sb, "%s %s %04o %d:%d size=%d nlink=%d", p, n.Type, n.Mode, n.UID, n.GID, n.Size, n.Nlink)
		for _, f := range [][2]string{{"sha256", n.Content}, {"link", n.Link}, {"xattrs", n.Xattrs}} {
			if f[1] != "" {
				fmt.Fprintf(&sb, " %s=%s", f[0], f[1])
			}
		}
		if n.Type == "dev" {
			fmt.Fprintf(&sb, " rdev=%d", n.Rdev)
		}
		sb.WriteByte('\n')
	}
	return sb.String()
}
