package dump

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testdata"
)

// vectorDir is testdata/composefs at the module root.
func vectorDir(t testing.TB) string { return testdata.Dir(t, "composefs") }

// readVector returns the uncompressed dump. A vector whose whole content is the name of another
// vector is a git symlink stored as a file (special_v1.dump -> special.dump).
func readVector(t testing.TB, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); len(b) < 256 && !strings.ContainsAny(s, " \n") && s != name {
		if _, err := os.Stat(filepath.Join(dir, s)); err == nil {
			return readVector(t, dir, s)
		}
	}
	if strings.HasSuffix(name, ".gz") {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if b, err = io.ReadAll(zr); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

var nonStrict = map[string]bool{
	"no-newline.dump":                      true,
	"longlink.dump":                        true,
	"honggfuzz-longlink-unterminated.dump": true,
}

type vector struct {
	name    string
	dump    []byte
	sha256  string
	opts    []composefs.Option
	version string
}

func vectors(t testing.TB) []vector {
	dir := vectorDir(t)
	shas, _ := filepath.Glob(filepath.Join(dir, "*.sha256"))
	var vs []vector
	for _, s := range shas {
		name := strings.TrimSuffix(filepath.Base(s), ".sha256")
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.Size() == 0 {
			continue // no input for this checksum here
		}
		want, _ := os.ReadFile(s)
		v := vector{name: name, dump: readVector(t, dir, name), sha256: strings.TrimSpace(string(want))}
		if ver, err := os.ReadFile(filepath.Join(dir, name+".version")); err == nil {
			n, err := strconv.Atoi(strings.TrimSpace(string(ver)))
			if err != nil {
				t.Fatal(err)
			}
			v.version = strconv.Itoa(n)
			v.opts = []composefs.Option{composefs.WithMinVersion(n), composefs.WithMaxVersion(n)}
		}
		vs = append(vs, v)
	}
	if len(vs) == 0 {
		t.Fatal("no composefs vectors")
	}
	return vs
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestVectorsImageChecksum(t *testing.T) {
	hasFsck := exec.Command("fsck.erofs", "--help").Run() == nil || lookPath("fsck.erofs")
	for _, v := range vectors(t) {
		t.Run(v.name, func(t *testing.T) {
			root, err := Parse(bytes.NewReader(v.dump), !nonStrict[v.name])
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			img, err := composefs.BuildImage(root, v.opts...)
			if err != nil {
				t.Fatalf("build: %v", err)
			}
			if got := sum(img); got != v.sha256 {
				t.Errorf("image sha256 %s, mkcomposefs wrote %s", got, v.sha256)
			}
			// image -> tree -> image, and image -> dump -> tree -> image, give the same bytes.
			back, err := composefs.ReadImage(img)
			if err != nil {
				t.Fatalf("reading image back: %v", err)
			}
			img2, err := composefs.BuildImage(back, v.opts...)
			if err != nil {
				t.Fatalf("rebuilding from image: %v", err)
			}
			if !bytes.Equal(img, img2) {
				t.Errorf("image -> tree -> image differs")
			}
			var d bytes.Buffer
			if err := Write(&d, back); err != nil {
				t.Fatal(err)
			}
			root2, err := Parse(bytes.NewReader(d.Bytes()), !nonStrict[v.name])
			if err != nil {
				t.Fatalf("parsing dump of image: %v", err)
			}
			img3, err := composefs.BuildImage(root2, v.opts...)
			if err != nil {
				t.Fatalf("building from dump of image: %v", err)
			}
			if !bytes.Equal(img, img3) {
				t.Errorf("image -> dump -> image differs")
			}
			// The same tree with dense inodes reads back the same, in no more bytes.
			dense, err := composefs.BuildImage(root, append(v.opts, composefs.WithDenseInodes())...)
			if err != nil {
				t.Fatalf("build dense: %v", err)
			}
			if len(dense) > len(img) {
				t.Errorf("dense image of %d bytes, mkcomposefs's %d", len(dense), len(img))
			}
			if err := sameTree(back, dense); err != nil {
				t.Errorf("dense image: %v", err)
			}
			// Debian's fsck.erofs (erofs-utils 1.5) predates long xattr prefixes: the dense
			// layout is checked by the kernel (storeimage.TestMountEqualsCheckout).
			if hasFsck {
				path := filepath.Join(t.TempDir(), "img")
				if err := os.WriteFile(path, img, 0o644); err != nil {
					t.Fatal(err)
				}
				if out, err := exec.Command("fsck.erofs", path).CombinedOutput(); err != nil {
					t.Errorf("fsck.erofs: %v\n%s", err, out)
				}
			}
		})
	}
}

// sameTree says whether img reads back as the tree want, compared through their dumps.
func sameTree(want *composefs.Node, img []byte) error {
	got, err := composefs.ReadImage(img)
	if err != nil {
		return fmt.Errorf("reading back: %w", err)
	}
	var w, g bytes.Buffer
	if err := Write(&w, want); err != nil {
		return err
	}
	if err := Write(&g, got); err != nil {
		return err
	}
	if !bytes.Equal(w.Bytes(), g.Bytes()) {
		return fmt.Errorf("reads back as\n%s\nwant\n%s", g.Bytes(), w.Bytes())
	}
	return nil
}

func lookPath(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

func TestShouldFailVectors(t *testing.T) {
	dir := vectorDir(t)
	files, _ := filepath.Glob(filepath.Join(dir, "should-fail-*.dump"))
	if len(files) == 0 {
		t.Fatal("no should-fail vectors")
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			b := readVector(t, dir, name)
			// Rejected in strict mode, and also without it, so each is rejected for its own
			// fault and not just for a missing final newline.
			for _, strict := range []bool{true, false} {
				root, err := Parse(bytes.NewReader(b), strict)
				if err == nil {
					// Some inputs are only rejected when written, like mkcomposefs does.
					_, err = composefs.BuildImage(root)
				}
				if err == nil {
					t.Fatalf("%s accepted (strict=%v)", name, strict)
				}
				if !errors.Is(err, errdefs.ErrInvalid) {
					t.Errorf("strict=%v: error %v is not ErrInvalid", strict, err)
				}
				t.Logf("strict=%v rejected: %v", strict, err)
			}
		})
	}
}
