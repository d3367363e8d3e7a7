package dump

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/internal/testkit"
)

func cs9Developer(b *testing.B) *composefs.Node {
	dir := vectorDir(b)
	data := readVector(b, dir, "cs9-x86_64-developer.dump.gz")
	root, err := Parse(bytes.NewReader(data), true)
	if err != nil {
		b.Fatal(err)
	}
	return root
}

// BenchmarkBuildCS9 measures writing the image of cs9-x86_64-developer (64k inodes) from a
// parsed tree, and, in the same run, mkfs.erofs on the same tree materialised as sparse files.
func BenchmarkBuildCS9(b *testing.B) {
	root := cs9Developer(b)
	// CPU time per op is reported too: on a loaded machine wall time says little.
	b.Run("kura", func(b *testing.B) {
		start := cpuSelf()
		for i := 0; i < b.N; i++ {
			if err := composefs.WriteImage(io.Discard, root); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64((cpuSelf()-start).Milliseconds())/float64(b.N), "cpu-ms/op")
	})
	b.Run("parse+kura", func(b *testing.B) {
		data := readVector(b, vectorDir(b), "cs9-x86_64-developer.dump.gz")
		b.SetBytes(int64(len(data)))
		for i := 0; i < b.N; i++ {
			r, err := Parse(bytes.NewReader(data), true)
			if err != nil {
				b.Fatal(err)
			}
			if err := composefs.WriteImage(io.Discard, r); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, sparse := range []bool{true, false} {
		name := "mkfs.erofs-sparse"
		if !sparse {
			name = "mkfs.erofs-empty"
		}
		b.Run(name, func(b *testing.B) {
			if _, err := exec.LookPath("mkfs.erofs"); err != nil {
				testkit.Skip(b, "mkfs.erofs (erofs-utils) not installed")
			}
			if os.Geteuid() != 0 {
				testkit.Skip(b, "materialising devices and owners needs root")
			}
			tree := filepath.Join(b.TempDir(), "tree")
			materialise(b, root, tree, sparse)
			img := filepath.Join(b.TempDir(), "img")
			var cpu time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				// Chunked files with a throwaway blob device keep file data out of the image,
				// as composefs does; all-zero chunks are deduplicated.
				cmd := exec.Command("mkfs.erofs", "--quiet", "--chunksize=1048576", "--blobdev="+img+".blob", img, tree)
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("mkfs.erofs: %v\n%s", err, out)
				}
				cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			}
			b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
		})
	}
}

func cpuSelf() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// materialise writes the tree to dir: directories, sparse (or empty) regular files of the right size,
// symlinks, device nodes, hard links, owners, modes, xattrs (where the kernel allows) and mtimes.
func materialise(b *testing.B, root *composefs.Node, dir string, sparse bool) {
	var walk func(n *composefs.Node, p string)
	var dirs []*composefs.Node
	var dirPaths []string
	walk = func(n *composefs.Node, p string) {
		if t := n.HardlinkTo; t != nil {
			return
		}
		switch n.Mode & composefs.ModeTypeMask {
		case composefs.ModeDir:
			if err := os.Mkdir(p, 0o755); err != nil {
				b.Fatal(err)
			}
			dirs, dirPaths = append(dirs, n), append(dirPaths, p)
			for _, c := range n.Children() {
				walk(c, filepath.Join(p, c.Name()))
			}
			return
		case composefs.ModeRegular:
			f, err := os.Create(p)
			if err != nil {
				b.Fatal(err)
			}
			if len(n.Content) > 0 {
				f.Write(n.Content)
			} else if !sparse {
				// metadata only: no data at all
			} else if err := f.Truncate(int64(n.Size)); err != nil {
				b.Fatal(err)
			}
			f.Close()
		case composefs.ModeSymlink:
			if err := os.Symlink(n.Payload, p); err != nil {
				b.Fatal(err)
			}
		default:
			if err := unix.Mknod(p, n.Mode, int(n.Rdev)); err != nil {
				b.Fatal(err)
			}
		}
		setMeta(n, p)
	}
	walk(root, dir)
	var links func(n *composefs.Node, p string)
	links = func(n *composefs.Node, p string) {
		for _, c := range n.Children() {
			cp := filepath.Join(p, c.Name())
			if c.HardlinkTo != nil {
				if err := os.Link(filepath.Join(dir, c.Target().Path()), cp); err != nil {
					b.Fatal(err)
				}
			} else if c.IsDir() {
				links(c, cp)
			}
		}
	}
	links(root, dir)
	for i := len(dirs) - 1; i >= 0; i-- {
		setMeta(dirs[i], dirPaths[i])
	}
}

func setMeta(n *composefs.Node, p string) {
	unix.Lchown(p, int(n.UID), int(n.GID))
	if n.Mode&composefs.ModeTypeMask != composefs.ModeSymlink {
		unix.Chmod(p, n.Mode&0o7777)
	}
	for _, x := range n.Xattrs {
		unix.Lsetxattr(p, x.Name, x.Value, 0) // security.* may be refused without an LSM
	}
	ts := []unix.Timespec{{Sec: n.Mtime.Sec, Nsec: int64(n.Mtime.Nsec)}, {Sec: n.Mtime.Sec, Nsec: int64(n.Mtime.Nsec)}}
	unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}
