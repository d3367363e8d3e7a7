package verity

import (
	"bytes"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kura-oci/kura/internal/testkit"
)

func fsverityDigest(t *testing.T, path string) string {
	t.Helper()
	out, err := exec.Command("fsverity", "digest", "--hash-alg=sha256", "--block-size=4096", path).Output()
	if err != nil {
		t.Fatalf("fsverity digest: %v", err)
	}
	// "sha256:HEX PATH"
	f := strings.Fields(string(out))
	return strings.TrimPrefix(f[0], "sha256:")
}

func TestDigestMatchesFsverity(t *testing.T) {
	if _, err := exec.LookPath("fsverity"); err != nil {
		testkit.Skip(t, "fsverity (Debian package fsverity) not installed")
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewSource(1))
	sizes := []int{0, 1, 4095, 4096, 4097, 128 * 4096, 128*4096 + 1, 129 * 4096, 3<<20 + 17, 128*128*4096 + 4096}
	for _, size := range sizes {
		data := make([]byte, size)
		rng.Read(data)
		path := filepath.Join(dir, "f")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		want := fsverityDigest(t, path)
		got, err := FromFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if got.String() != want {
			t.Errorf("size %d: got %s, fsverity says %s", size, got, want)
		}
		// Streaming in odd pieces must give the same digest.
		h := New()
		for p := data; len(p) > 0; {
			n := 1 + rng.Intn(10000)
			if n > len(p) {
				n = len(p)
			}
			h.Write(p[:n])
			p = p[n:]
		}
		if h.Digest() != got {
			t.Errorf("size %d: streamed digest differs", size)
		}
	}
}

func TestEmptyFileKnownDigest(t *testing.T) {
	// fsverity digest of an empty file (root hash all zero).
	const want = "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95"
	if got := FromBytes(nil).String(); got != want {
		t.Fatalf("empty: got %s want %s", got, want)
	}
}

func TestMetacopyXattr(t *testing.T) {
	d, err := ParseDigest(strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	v := MetacopyXattr(d)
	if len(v) != 36 || !bytes.Equal(v[:4], []byte{0, 36, 0, 1}) || !bytes.Equal(v[4:], d[:]) {
		t.Fatalf("bad metacopy %x", v)
	}
	if _, err := ParseDigest("xyz"); err == nil {
		t.Fatal("bad digest accepted")
	}
}

// TestFromReaderReusesHasher: FromReader reuses pooled hashers, so a digest after a larger file
// (more tree levels left over) or after an empty one must equal that of a fresh Hasher.
func TestFromReaderReusesHasher(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	for _, size := range []int{128*128*4096 + 4096, 1, 0, 129 * 4096, 4096, 3<<20 + 17, 0, 4097, 65} {
		data := make([]byte, size)
		rng.Read(data)
		got, err := FromReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		h := New()
		h.Write(data)
		if want := h.Digest(); got != want {
			t.Errorf("size %d: FromReader %s, a fresh Hasher %s", size, got, want)
		}
	}
}
