package reliability

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/auth"
	"github.com/kura-oci/kura/checkout"
	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/internal/testkit/treetest"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// outcome is what a pull of a hostile image must end in.
type outcome int

const (
	mustFail outcome = iota // a clean error, no image recorded
	mustPass                // the image is legal: stored, exported tar equals the DiffID
	either                  // the bytes the mode reads are legal, the rest lies: fail, or pass correctly
	skip                    // not tried in this mode (the case says why)
)

func (o outcome) String() string { return [...]string{"error", "ok", "error or ok", "skipped"}[o] }

// hostileImage is one case of the corpus: layers and a config that may lie.
type hostileImage struct {
	layers  []*handLayer
	diffIDs []digest.Digest // config's diff_ids; default: the layers' true DiffIDs
}

type hostileCase struct {
	name    string
	build   func(t testing.TB, canary string) hostileImage
	partial outcome // pulled with ranges (the TOC path)
	full    outcome // pulled whole (WithoutPartial: the tar stream path)
	// wantErr, if set, is the sentinel a failure must wrap.
	wantErr error
	// check runs on a checked-out image (as root, see checkoutCheck).
	check func(t testing.TB, root string)
}

// base is a small legal tree that cases mutate.
func base(extra ...tarEntry) []tarEntry {
	return append([]tarEntry{dir("etc/"), reg("etc/hostname", 0o644, "kura\n"), symlink("etc/link", "hostname"),
		reg("etc/motd", 0o644, strings.Repeat("welcome to the hostile corpus\n", 40))}, extra...)
}

func one(t testing.TB, entries ...tarEntry) hostileImage {
	return hostileImage{layers: []*handLayer{newHandLayer(t, tartest.Tar(t, entries...))}}
}

// tocLie builds the base tree plus a device node and an xattr'd file, then changes one field of
// one TOC entry: the TOC and tar-split then disagree.
func tocLie(field string, lie func(e *chunked.Entry)) hostileCase {
	return hostileCase{name: "toc lies about " + field, partial: mustFail, full: either, wantErr: errdefs.ErrInvalid,
		build: func(t testing.TB, _ string) hostileImage {
			x := reg("etc/xattr", 0o644, "has an xattr")
			x.Header.PAXRecords = map[string]string{"SCHILY.xattr.user.kura": "v"}
			img := one(t, base(device("dev/null", tar.TypeChar, 1, 3), x)...)
			target := map[string]string{"linkName": "etc/link", "devs": "dev/null"}[field]
			if target == "" {
				target = "etc/xattr"
			}
			_, e := img.layers[0].entry(t, target)
			lie(e)
			return img
		}}
}

func hostileCases() []hostileCase {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []hostileCase{
		{name: "legal control image", partial: mustPass, full: mustPass,
			build: func(t testing.TB, _ string) hostileImage { return one(t, base()...) }},
		{name: "name with ../ escaping the root", partial: mustFail, full: mustFail, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, _ string) hostileImage {
				return one(t, base(reg("../canary/evil", 0o644, "escaped"))...)
			}},
		{name: "name with ../ inside", partial: mustFail, full: mustFail, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, _ string) hostileImage {
				return one(t, base(reg("etc/../../canary/evil", 0o644, "escaped"))...)
			}},
		{name: "absolute name", partial: mustFail, full: mustFail, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, canary string) hostileImage {
				return one(t, base(reg(canary+"/evil", 0o644, "escaped"))...)
			}},
		{name: "hardlink to ../", partial: mustFail, full: mustFail, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, _ string) hostileImage {
				return one(t, base(hardlink("etc/stolen", "../canary/secret"))...)
			}},
		{name: "hardlink to an absolute path", partial: mustFail, full: mustFail, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, canary string) hostileImage {
				return one(t, base(hardlink("etc/stolen", canary+"/secret"))...)
			}},
		// A hardlink to a file of a lower layer is legal for some tools; it must never reach outside.
		{name: "hardlink to a name not in the layer", partial: either, full: either,
			build: func(t testing.TB, _ string) hostileImage {
				return one(t, base(hardlink("etc/stolen", "etc/shadow"))...)
			}},
		// Symlinks may point anywhere: that is legal. What must hold is that checkout never follows
		// them, neither when writing a file below one nor when writing the link's own name.
		{name: "file below a symlink to ../", partial: either, full: either,
			build: func(t testing.TB, _ string) hostileImage {
				return one(t, base(symlink("esc", "../../canary"), reg("esc/evil", 0o644, "escaped"))...)
			}},
		{name: "file below an absolute symlink", partial: either, full: either,
			build: func(t testing.TB, canary string) hostileImage {
				return one(t, base(symlink("esc", canary), reg("esc/evil", 0o644, "escaped"))...)
			}},
		{name: "symlink in one layer, file through it in the next", partial: either, full: either,
			build: func(t testing.TB, canary string) hostileImage {
				l1 := newHandLayer(t, tartest.Tar(t, base(symlink("esc", canary))...))
				l2 := newHandLayer(t, tartest.Tar(t, dir("esc/"), reg("esc/evil", 0o644, "escaped")))
				return hostileImage{layers: []*handLayer{l1, l2}}
			}},
		{name: "hardlink through a symlink", partial: either, full: either,
			build: func(t testing.TB, canary string) hostileImage {
				return one(t, base(symlink("esc", canary), hardlink("etc/stolen", "esc/secret"))...)
			}},
		// Issue 13 case 1: a whiteout naming "..": on a4b1d39 checkout emptied the target's parent.
		{name: "whiteout of .. at the root", partial: mustFail, full: mustFail, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, _ string) hostileImage { return one(t, base(reg("./.wh...", 0o644, ""))...) }},
		{name: "whiteout of .. in a directory", partial: mustFail, full: mustFail, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, _ string) hostileImage { return one(t, base(reg("etc/.wh...", 0o644, ""))...) }},
		{name: "whiteout of .", partial: mustFail, full: mustFail, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, _ string) hostileImage { return one(t, base(reg(".wh..", 0o644, ""))...) }},
		{name: "empty whiteout", partial: mustFail, full: mustFail, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, _ string) hostileImage { return one(t, base(reg("etc/.wh.", 0o644, ""))...) }},
		{name: "AUFS metadata whiteout", partial: mustFail, full: mustFail, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, _ string) hostileImage { return one(t, base(reg(".wh..wh.plnk", 0o644, ""))...) }},
		// Issue 13 case 7: a whiteout hides lower layers only; the same layer's file stays.
		{name: "file and its whiteout in one layer", partial: mustPass, full: mustPass,
			build: func(t testing.TB, _ string) hostileImage {
				return one(t, base(reg("etc/a", 0o644, "stays\n"), reg("etc/.wh.a", 0o644, ""))...)
			},
			check: func(t testing.TB, root string) {
				if b, err := os.ReadFile(filepath.Join(root, "etc/a")); err != nil || string(b) != "stays\n" {
					t.Fatalf("etc/a: %q, %v; want the same layer's file", b, err)
				}
			}},
		// Issue 13 case 11: overlay xattrs from the image never reach a checkout.
		{name: "trusted.overlay xattrs in the image", partial: mustPass, full: mustPass,
			build: func(t testing.TB, _ string) hostileImage {
				d := dir("opaque/")
				d.Header.PAXRecords = map[string]string{"SCHILY.xattr.trusted.overlay.opaque": "y"}
				f := reg("opaque/f", 0o644, "x")
				f.Header.PAXRecords = map[string]string{"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.user.keep": "1"}
				return one(t, base(d, f)...)
			},
			check: func(t testing.TB, root string) {
				for _, p := range []string{"opaque", "opaque/f"} {
					buf := make([]byte, 4096)
					n, err := syscall.Listxattr(filepath.Join(root, p), buf)
					if err != nil || strings.Contains(string(buf[:n]), "overlay") {
						t.Fatalf("%s xattrs %q (%v): want no overlay xattrs", p, buf[:max(n, 0)], err)
					}
				}
			}},
		{name: "owner over 32 bits", partial: mustPass, full: mustPass, // stored exactly; checkout refuses it
			build: func(t testing.TB, _ string) hostileImage {
				f := reg("etc/owned", 0o644, "x")
				f.Header.Uid, f.Header.Gid = 1<<32+1, 1<<33
				return one(t, base(f)...)
			}},
		{name: "pax global header (git archive)", partial: mustPass, full: mustPass,
			build: func(t testing.TB, _ string) hostileImage {
				g := tarEntry{Header: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header",
					PAXRecords: map[string]string{"comment": "6f1c2e0e5d3c7b1a9e8f7a6b5c4d3e2f1a0b9c8d"}}}
				return one(t, append([]tarEntry{g}, base()...)...)
			}},
		{name: "mtime after year 9999", partial: mustPass, full: mustPass,
			build: func(t testing.TB, _ string) hostileImage {
				f := reg("etc/late", 0o644, "x")
				f.Header.ModTime = time.Date(30000, 1, 1, 0, 0, 0, 0, time.UTC)
				return one(t, base(f)...)
			}},
		// A TOC cannot carry these names: a partial pull falls back to a full pull
		// (errdefs.ErrNeedFull), which stores them exactly, and never changes them.
		{name: "names that are not UTF-8", partial: mustPass, full: mustPass,
			build: func(t testing.TB, _ string) hostileImage {
				return one(t, base(reg("etc/caf\xe9", 0o644, "x"), symlink("etc/l\xff", "caf\xe9"))...)
			},
			check: func(t testing.TB, root string) {
				if b, err := os.ReadFile(filepath.Join(root, "etc/caf\xe9")); err != nil || string(b) != "x" {
					t.Fatalf("etc/caf\\xe9: %q, %v", b, err)
				}
				if l, err := os.Readlink(filepath.Join(root, "etc/l\xff")); err != nil || l != "caf\xe9" {
					t.Fatalf("etc/l\\xff -> %q, %v", l, err)
				}
			}},
		tocLie("type", func(e *chunked.Entry) { e.Type = chunked.TypeDir }),
		tocLie("name", func(e *chunked.Entry) { e.Name = "etc/other" }),
		tocLie("linkName", func(e *chunked.Entry) { e.Linkname = "/etc/shadow" }),
		tocLie("mode", func(e *chunked.Entry) { e.Mode = 0o4755 }),
		tocLie("size", func(e *chunked.Entry) { e.Size++ }),
		tocLie("uid", func(e *chunked.Entry) { e.UID = 0o4242 }),
		tocLie("gid", func(e *chunked.Entry) { e.GID = 0o4242 }),
		tocLie("modtime", func(e *chunked.Entry) { e.ModTime = &now }),
		tocLie("accesstime", func(e *chunked.Entry) { e.AccessTime = &now }),
		tocLie("changetime", func(e *chunked.Entry) { e.ChangeTime = &now }),
		tocLie("devs", func(e *chunked.Entry) { e.Devmajor, e.Devminor = 8, 0 }),
		tocLie("xattrs", func(e *chunked.Entry) { e.Xattrs = map[string]string{"security.capability": "AQAAAg=="} }),
		{name: "toc has an entry tar-split lacks", partial: mustFail, full: either, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, _ string) hostileImage {
				img := one(t, base()...)
				l := img.layers[0]
				l.toc.Entries = append(l.toc.Entries, chunked.Entry{Type: chunked.TypeReg, Name: "etc/extra", Mode: 0o644})
				return img
			}},
		{name: "authentic toc, frames decode to other content", partial: mustFail, full: mustFail, wantErr: errdefs.ErrDigestMismatch,
			build: func(t testing.TB, _ string) hostileImage {
				img := one(t, base()...)
				img.layers[0].replaceContent(t, "etc/hostname", compress([]byte("evil\n")))
				return img
			}},
		{name: "authentic toc with the digest of the other content", partial: mustFail, full: mustFail, wantErr: errdefs.ErrDigestMismatch,
			build: func(t testing.TB, _ string) hostileImage {
				img := one(t, base()...)
				l := img.layers[0]
				l.replaceContent(t, "etc/hostname", compress([]byte("evil\n")))
				_, e := l.entry(t, "etc/hostname")
				e.Digest = digest.FromString("evil\n").String()
				return img
			}},
		{name: "overlapping frames", partial: mustFail, full: either, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, _ string) hostileImage {
				img := one(t, base()...)
				l := img.layers[0]
				_, a := l.entry(t, "etc/hostname")
				_, b := l.entry(t, "etc/motd")
				b.Offset = a.Offset
				return img
			}},
		{name: "frames past the data", partial: mustFail, full: either, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, _ string) hostileImage {
				img := one(t, base()...)
				_, e := img.layers[0].entry(t, "etc/motd")
				e.EndOffset += 1 << 20
				return img
			}},
		{name: "negative offset", partial: mustFail, full: either, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, _ string) hostileImage {
				img := one(t, base()...)
				_, e := img.layers[0].entry(t, "etc/motd")
				e.Offset = -100
				return img
			}},
		// Only the partial pull here: the whole-blob path keeps everything after the tar's end in
		// memory (see TestBombAfterTarEnd), which would take a minute and a GiB.
		{name: "zstd bomb: 16-byte file whose frame expands to 256 MiB", partial: mustFail, full: skip,
			build: func(t testing.TB, _ string) hostileImage {
				img := one(t, base(reg("bomb", 0o644, "sixteen bytes!!\n"))...)
				img.layers[0].replaceContent(t, "bomb", compress(make([]byte, 256<<20)))
				return img
			}},
		// Over the bound by its own declaration: the pull reads the layer whole instead (as the
		// reference does), and the layer itself is legal.
		{name: "toc larger than the 150 MiB bound (declared)", partial: mustPass, full: either,
			build: func(t testing.TB, _ string) hostileImage {
				img := one(t, base()...)
				img.layers[0].tocUncompressedLen = 151 << 20
				return img
			}},
		{name: "toc larger than the bound (declared small, expands to 151 MiB)", partial: mustFail, full: either, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, _ string) hostileImage {
				img := one(t, base()...)
				l := img.layers[0]
				j, _ := json.Marshal(l.toc)
				pad := `,"pad":"` + strings.Repeat("A", 151<<20) + `"}`
				l.tocJSON = append(j[:len(j)-1], pad...)
				l.tocUncompressedLen = int64(len(j))
				return img
			}},
		{name: "toc that is not JSON", partial: mustFail, full: either, wantErr: errdefs.ErrInvalid,
			build: func(t testing.TB, _ string) hostileImage {
				img := one(t, base()...)
				img.layers[0].tocJSON = []byte(`{"version":1,"entries":[{"type":"reg","name":`)
				return img
			}},
		{name: "duplicate names", partial: mustFail, full: either,
			build: func(t testing.TB, _ string) hostileImage {
				return one(t, base(reg("etc/hostname", 0o600, "second\n"))...)
			}},
		{name: "device nodes and a fifo", partial: mustPass, full: mustPass,
			build: func(t testing.TB, _ string) hostileImage {
				return one(t, base(dir("dev/"), device("dev/null", tar.TypeChar, 1, 3), device("dev/sda", tar.TypeBlock, 8, 0),
					device("dev/fifo", tar.TypeFifo, 0, 0))...)
			},
			check: func(t testing.TB, root string) {
				var st syscall.Stat_t
				if err := syscall.Lstat(filepath.Join(root, "dev/sda"), &st); err != nil {
					t.Fatal(err)
				}
				if st.Mode&syscall.S_IFMT != syscall.S_IFBLK || st.Rdev != 8<<8 {
					t.Fatalf("dev/sda: mode %o rdev %x", st.Mode, st.Rdev)
				}
			}},
		{name: "setuid, setgid and sticky bits", partial: mustPass, full: mustPass,
			build: func(t testing.TB, canary string) hostileImage {
				// Were the file ever executed, it would mark the canary.
				script := "#!/bin/sh\ntouch " + canary + "/executed\n"
				d := dir("tmp/")
				d.Header.Mode = 0o1777
				return one(t, base(dir("usr/"), reg("usr/su", 0o4755, script), reg("usr/sg", 0o2755, script), d)...)
			},
			check: func(t testing.TB, root string) {
				for name, want := range map[string]fs.FileMode{"usr/su": fs.ModeSetuid, "usr/sg": fs.ModeSetgid, "tmp": fs.ModeSticky} {
					fi, err := os.Lstat(filepath.Join(root, name))
					if err != nil {
						t.Fatal(err)
					}
					if fi.Mode()&want == 0 {
						t.Fatalf("%s: mode %v lost %v (checkout as root keeps it)", name, fi.Mode(), want)
					}
				}
			}},
		{name: "config diff_ids disagree with the layer", partial: mustFail, full: mustFail, wantErr: errdefs.ErrDigestMismatch,
			build: func(t testing.TB, _ string) hostileImage {
				img := one(t, base()...)
				img.diffIDs = []digest.Digest{digest.FromString("another layer")}
				return img
			}},
		{name: "config has more diff_ids than layers", partial: mustFail, full: mustFail,
			build: func(t testing.TB, _ string) hostileImage {
				img := one(t, base()...)
				img.diffIDs = []digest.Digest{img.layers[0].diffID, img.layers[0].diffID}
				return img
			}},
		{name: "tar-split from another tar", partial: mustFail, full: either,
			build: func(t testing.TB, _ string) hostileImage {
				img := one(t, base()...)
				other := newHandLayer(t, tartest.Tar(t, base(reg("etc/extra", 0o644, "x"))...))
				img.layers[0].tarSplit = other.tarSplit
				return img
			}},
	}
	return append(cases, tinyEntriesCases()...)
}

// tinyEntries is how many entries the "many tiny entries" case has: 20,000 in CI, 180,000 with
// KURA_DRILLS=long. An empty file costs 512 tar bytes, ~100 TOC bytes and ~790 tar-split bytes
// (the header, base64 in JSON), so 180k entries make a 92 MiB tar, an 18 MiB TOC and a 135 MiB
// tar-split: far past real images (tens of thousands of files) and just under the 150 MiB metadata
// bound (the reference's), so the case measures time and memory rather than hitting a limit.
// The long form adds 200,000 entries, whose 150.2 MiB tar-split is over the bound: the "partial"
// pull falls back to a whole pull and succeeds.
func tinyEntries() int {
	if longDrills() {
		return 180_000
	}
	return 20_000
}

func tinyEntriesCases() []hostileCase {
	cases := []hostileCase{tinyEntriesCase(tinyEntries(), mustPass)}
	if longDrills() {
		// Over the metadata bound: a partial pull falls back to a whole pull.
		cases = append(cases, tinyEntriesCase(200_000, mustPass))
	}
	return cases
}

func tinyEntriesCase(n int, partial outcome) hostileCase {
	var wantErr error
	if partial == mustFail {
		wantErr = errdefs.ErrInvalid
	}
	return hostileCase{name: fmt.Sprintf("%d tiny entries", n), partial: partial, full: mustPass, wantErr: wantErr,
		build: func(t testing.TB, _ string) hostileImage {
			entries := []tarEntry{dir("d/")}
			for i := 0; i < n; i++ {
				e := reg(fmt.Sprintf("d/%06d", i), 0o644, "")
				e.Header.Format = tar.FormatUSTAR
				e.Header.ModTime = time.Unix(mtime.Unix(), 0)
				entries = append(entries, e)
			}
			return one(t, entries...)
		}}
}

func longDrills() bool { return os.Getenv("KURA_DRILLS") == "long" }

// push stores the case's image in the registry under repo:tag.
func (img hostileImage) push(t testing.TB, reg *registrytest.Registry, repo string) {
	t.Helper()
	var descs []ocispec.Descriptor
	diffIDs := img.diffIDs
	for _, l := range img.layers {
		b, d := l.blob(t)
		reg.PushBlob(t, repo, b)
		descs = append(descs, d)
		if img.diffIDs == nil {
			diffIDs = append(diffIDs, l.diffID)
		}
	}
	cfg, mb := imagetest.Meta(diffIDs, descs)
	reg.PushBlob(t, repo, cfg)
	reg.PushManifest(t, repo, "latest", ocispec.MediaTypeImageManifest, mb)
}

// makeCanary creates dir/canary with a secret file; cases aim at it.
func makeCanary(t testing.TB, dir string) string {
	t.Helper()
	c := filepath.Join(dir, "canary")
	if err := os.MkdirAll(c, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c, "secret"), []byte("do not touch\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

func registryClient() *registry.Client {
	return registry.New(registry.WithKeychain(auth.NewKeychain(auth.WithCreds(registrytest.Username+":"+registrytest.Password))),
		registry.WithRetry(2, time.Millisecond), registry.WithTLSVerify(false))
}

// pullImage pulls host/repo:latest into s.
func pullImage(ctx context.Context, t testing.TB, s *store.Store, host, repo string, opts ...pull.Option) (*pull.Report, error) {
	t.Helper()
	ref, err := imageref.Parse("docker://" + host + "/" + repo + ":latest")
	if err != nil {
		t.Fatal(err)
	}
	return pull.Pull(ctx, s, registry.NewSource(registryClient(), ref), append(opts, pull.WithName(repo))...)
}

func checkFsck(t testing.TB, s *store.Store) {
	t.Helper()
	rep, err := s.Fsck(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Clean() {
		t.Fatalf("fsck: %v", rep.Problems)
	}
}

func exportDigest(t testing.TB, s *store.Store, diffID digest.Digest) (digest.Digest, error) {
	h := sha256.New()
	ctx := context.Background()
	unlock, err := s.RLock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	err = layer.Export(ctx, s, diffID, h)
	return digest.NewDigest(digest.SHA256, h), err
}

// TestHostileLayers pulls every case of the corpus through the real in-process registry, partially
// and whole, into a store that sits next to a canary directory. Every pull must end as the case
// says; after each, the canary is untouched, fsck is clean, and a pulled image exports to its
// DiffID and checks out (as root) inside its target only.
func TestHostileLayers(t *testing.T) {
	reg := registrytest.New(t)
	ctx := context.Background()
	tried, passed := 0, 0
	for i, tc := range hostileCases() {
		t.Run(tc.name, func(t *testing.T) {
			work := t.TempDir()
			canary := makeCanary(t, work)
			img := tc.build(t, canary)
			repo := fmt.Sprintf("hostile%d", i)
			img.push(t, reg, repo)
			for _, mode := range []struct {
				name string
				want outcome
				opts []pull.Option
			}{{"partial", tc.partial, nil}, {"full", tc.full, []pull.Option{pull.WithoutPartial()}}} {
				if mode.want == skip {
					continue
				}
				tried++
				before := treetest.Snapshot(t, canary).String()
				root := filepath.Join(work, "store-"+mode.name)
				s := teststore.Open(t, teststore.At(root))
				var m0, m1 runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&m0)
				start := time.Now()
				_, err := pullImage(ctx, t, s, reg.Host, repo, mode.opts...)
				elapsed := time.Since(start)
				runtime.ReadMemStats(&m1)
				t.Logf("%s pull: %v in %v, %d MiB allocated", mode.name, err, elapsed.Round(time.Millisecond), (m1.TotalAlloc-m0.TotalAlloc)>>20)
				switch {
				case err != nil && mode.want == mustPass:
					t.Fatalf("%s pull of a legal image failed: %v", mode.name, err)
				case err == nil && mode.want == mustFail:
					t.Fatalf("%s pull succeeded, want an error", mode.name)
				case err != nil && tc.wantErr != nil && mode.want == mustFail && !errors.Is(err, tc.wantErr):
					t.Fatalf("%s pull: %v, want an error wrapping %v", mode.name, err, tc.wantErr)
				}
				if strings.Contains(tc.name, "bomb") && m1.TotalAlloc-m0.TotalAlloc > 128<<20 {
					t.Fatalf("the bomb made the pull allocate %d MiB", (m1.TotalAlloc-m0.TotalAlloc)>>20)
				}
				checkFsck(t, s)
				ids, _ := s.Images(ctx)
				if err != nil {
					if len(ids) != 0 {
						t.Fatalf("a failed pull recorded images %v", ids)
					}
				} else {
					for _, l := range img.layers {
						if got, err := exportDigest(t, s, l.diffID); err != nil || got != l.diffID {
							t.Fatalf("export: %s, %v; want %s", got, err, l.diffID)
						}
					}
					checkoutCheck(ctx, t, s, repo, work, canary, tc.check)
				}
				if after := treetest.Snapshot(t, canary).String(); after != before {
					t.Fatalf("the canary changed:\n%s\nwas\n%s", after, before)
				}
				passed++
			}
		})
	}
	t.Logf("hostile corpus: %d pulls tried, %d ended as required", tried, passed)
}

// checkoutCheck materialises a pulled image and checks that nothing appeared outside the target
// (next to it, or in the canary), then runs the case's own check.
func checkoutCheck(ctx context.Context, t testing.TB, s *store.Store, name, work, canary string, check func(testing.TB, string)) {
	t.Helper()
	img, err := s.ResolveImage(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	outside := treetest.Snapshot(t, canary).String()
	target := filepath.Join(work, "rootfs-"+filepath.Base(s.Root()))
	_, err = checkout.Checkout(ctx, s, img, target, checkout.Options{})
	if err != nil {
		t.Logf("checkout: %v", err)
	} else if check != nil {
		check(t, target)
	}
	if got := treetest.Snapshot(t, canary).String(); got != outside {
		t.Fatalf("checkout wrote outside its target:\n%s", got)
	}
	for _, p := range []string{filepath.Join(work, "evil"), "/evil", filepath.Join(filepath.Dir(work), "canary")} {
		if _, err := os.Lstat(p); err == nil {
			t.Fatalf("checkout created %s", p)
		}
	}
}

// TestBombAfterTarEnd: a zstd stream holding a small tar followed by 256 MiB of zeros (a 10 KiB
// frame) pulled whole. Import must not hold the trailing bytes in memory: they belong to no entry.
func TestBombAfterTarEnd(t *testing.T) {
	reg := registrytest.New(t)
	img := one(t, base(reg0("bomb", "sixteen bytes!!\n"))...)
	img.layers[0].replaceContent(t, "bomb", compress(make([]byte, 256<<20)))
	img.push(t, reg, "bomb")
	s := teststore.Open(t)
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	_, err := pullImage(context.Background(), t, s, reg.Host, "bomb", pull.WithoutPartial())
	runtime.ReadMemStats(&m1)
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("pulling the bomb whole: %v, want ErrInvalid (trailing data over tarstream.MaxTrailer)", err)
	}
	if got := (m1.TotalAlloc - m0.TotalAlloc) >> 20; got > 128 {
		t.Fatalf("pulling the bomb whole allocated %d MiB: %v", got, err)
	}
}

func reg0(name, content string) tarEntry { return reg(name, 0o644, content) }
