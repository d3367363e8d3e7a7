package testkit

import (
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

var kuraBuild struct {
	once sync.Once
	path string
	err  error
}

// Kura returns the path of a kura binary built from this checkout, once per test binary. It lives
// in $TMPDIR/kura-testkit-UID/ (mode 0755, one binary per checkout, replaced by rename), so that
// the unprivileged user of Unprivileged can run it wherever the checkout is.
func Kura(t testing.TB) string {
	t.Helper()
	kuraBuild.once.Do(func() { kuraBuild.path, kuraBuild.err = buildKura() })
	if kuraBuild.err != nil {
		t.Fatalf("building kura: %v", kuraBuild.err)
	}
	return kuraBuild.path
}

func buildKura() (string, error) {
	root, err := FindModuleRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(os.TempDir(), "kura-testkit-"+strconv.Itoa(os.Geteuid()))
	if err := os.Mkdir(dir, 0o755); err == nil {
		if err := os.Chmod(dir, 0o755); err != nil { // whatever the umask
			return "", err
		}
	} else if !os.IsExist(err) {
		return "", err
	}
	// The name is predictable: refuse a directory someone else made or can write into.
	var st syscall.Stat_t
	if err := syscall.Lstat(dir, &st); err != nil {
		return "", err
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR || int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 {
		return "", fmt.Errorf("%s is not a directory of ours that only we can write", dir)
	}
	h := fnv.New64a()
	h.Write([]byte(root))
	out := filepath.Join(dir, fmt.Sprintf("kura-%x", h.Sum64()))
	tmp := fmt.Sprintf("%s.%d", out, os.Getpid())
	cmd := exec.Command("go", "build", "-o", tmp, "./cmd/kura")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("go build: %v\n%s", err, b)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.Remove(tmp)
		return "", err
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", err
	}
	return out, nil
}
