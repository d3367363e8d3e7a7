package snapshotter

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/layername"
)

// writeUpperTar writes the overlay upper directory dir as an OCI layer tar to w: the form
// store/layer.Import ingests, so a plain-path commit can move its files into Kura's store.
// overlayfs records deletions its own way, and the tar says them the OCI way: a 0:0 character
// device NAME becomes the empty file .wh.NAME, a directory with trusted.overlay.opaque=y gets
// .wh..wh..opq. Other trusted.overlay.* attributes are overlayfs's bookkeeping and are left
// out; every other extended attribute is kept (PAX SCHILY.xattr), as are ownership, modes,
// modification times and hardlinks (the second name of an inode is a hard link to the first).
// Entries come in lexical order, so one directory always gives the same tar.
func writeUpperTar(ctx context.Context, dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	links := map[uint64]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		return writeUpperEntry(tw, p, filepath.ToSlash(rel), links)
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		return fmt.Errorf("snapshotter: tar of %s: %w", dir, err)
	}
	return nil
}

// writeUpperEntry writes the entry at p (name rel in the layer; "." is the upper's root).
func writeUpperEntry(tw *tar.Writer, p, rel string, links map[uint64]string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no stat", p)
	}
	xattrs, err := readXattrs(p)
	if err != nil {
		return err
	}
	opaque := xattrs["trusted.overlay.opaque"] == "y"
	for k := range xattrs {
		if strings.HasPrefix(k, "trusted.overlay.") {
			delete(xattrs, k)
		}
	}
	if rel == "." { // the root has no entry of its own; its opaque marker still counts
		if opaque {
			return writeMarker(tw, layername.OpaqueMarker, st)
		}
		return nil
	}
	if fi.Mode()&fs.ModeCharDevice != 0 && st.Rdev == 0 {
		dir, base := filepath.Split(rel)
		return writeMarker(tw, filepath.ToSlash(dir)+layername.WhiteoutPrefix+base, st)
	}
	h, err := upperHeader(p, rel, fi, st, links)
	if err != nil {
		return err
	}
	for k, v := range xattrs {
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords["SCHILY.xattr."+k] = v
	}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if h.Typeflag == tar.TypeReg && h.Size > 0 {
		if err := copyFile(tw, p); err != nil {
			return err
		}
	}
	if opaque && fi.IsDir() {
		return writeMarker(tw, rel+"/"+layername.OpaqueMarker, st)
	}
	return nil
}

// upperHeader is the tar header of an ordinary entry; a regular file seen before under
// another name (same inode) is a hard link to that name.
func upperHeader(p, rel string, fi fs.FileInfo, st *syscall.Stat_t, links map[uint64]string) (*tar.Header, error) {
	var target string
	if fi.Mode()&fs.ModeSymlink != 0 {
		t, err := os.Readlink(p)
		if err != nil {
			return nil, err
		}
		target = t
	}
	h, err := tar.FileInfoHeader(fi, target)
	if err != nil {
		return nil, err
	}
	h.Name, h.Format = rel, tar.FormatPAX
	h.Uid, h.Gid, h.Uname, h.Gname = int(st.Uid), int(st.Gid), "", ""
	h.ModTime = time.Unix(st.Mtim.Unix()).UTC()
	h.AccessTime, h.ChangeTime = time.Time{}, time.Time{}
	if fi.IsDir() {
		h.Name += "/"
	}
	if fi.Mode().IsRegular() && st.Nlink > 1 {
		if first, ok := links[st.Ino]; ok {
			h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
			return h, nil
		}
		links[st.Ino] = rel
	}
	return h, nil
}

// writeMarker writes an OCI whiteout or opaque marker: an empty regular file.
func writeMarker(tw *tar.Writer, name string, st *syscall.Stat_t) error {
	return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644,
		Uid: int(st.Uid), Gid: int(st.Gid), ModTime: time.Unix(st.Mtim.Unix()).UTC(), Format: tar.FormatPAX})
}

func copyFile(w io.Writer, p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// readXattrs reads every extended attribute of p (not following a symlink).
func readXattrs(p string) (map[string]string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if errors.Is(err, unix.ERANGE) {
		if n, err = unix.Llistxattr(p, nil); err == nil {
			buf = make([]byte, n)
			n, err = unix.Llistxattr(p, buf)
		}
	}
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing xattrs of %s: %w", p, err)
	}
	out := map[string]string{}
	for _, k := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if k == "" {
			continue
		}
		v, err := getXattr(p, k)
		if err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, nil
}

func getXattr(p, k string) (string, error) {
	n, err := unix.Lgetxattr(p, k, nil)
	if err != nil {
		return "", fmt.Errorf("xattr %s of %s: %w", k, p, err)
	}
	v := make([]byte, n)
	if n, err = unix.Lgetxattr(p, k, v); err != nil {
		return "", fmt.Errorf("xattr %s of %s: %w", k, p, err)
	}
	return string(v[:n]), nil
}
