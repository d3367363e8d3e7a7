package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// NobodyID is the uid and gid Unprivileged runs as (Debian's nobody and nogroup).
const NobodyID = 65534

// Unprivileged returns a command that runs name with args as uid and gid 65534 with no
// supplementary groups (setpriv), with HOME set to home and the XDG variables cleared, so the
// command finds its default store under HOME as a rootless user's would. The caller sets Stdin,
// Stdout and the like. It needs root to switch users; without root or setpriv the test is
// skipped (failed under KURA_TEST_STRICT=1).
func Unprivileged(t testing.TB, home, name string, args ...string) *exec.Cmd {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "running as an unprivileged user needs root to switch to it")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		Skip(t, "setpriv (Debian package util-linux) not installed: %v", err)
	}
	id := strconv.Itoa(NobodyID)
	argv := append([]string{"--reuid=" + id, "--regid=" + id, "--clear-groups", "--", name}, args...)
	cmd := exec.Command(setpriv, argv...)
	cmd.Env = append(cleanEnv(), "HOME="+home, "USER=nobody", "LOGNAME=nobody")
	return cmd
}

// UnprivilegedHome makes an empty directory owned by the unprivileged user, reachable by it
// (its parents are world-searchable), and removed when the test ends.
func UnprivilegedHome(t testing.TB) string {
	t.Helper()
	parent, err := os.MkdirTemp("", "kura-home-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	if err := os.Chmod(parent, 0o711); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(parent, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, NobodyID, NobodyID); err != nil {
		Skip(t, "cannot give a directory to uid %d: %v", NobodyID, err)
	}
	return home
}

// cleanEnv is the environment without the variables that would point the unprivileged user at
// root's files.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "HOME", "USER", "LOGNAME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME",
			"XDG_RUNTIME_DIR", "XDG_STATE_HOME", "TMPDIR", "GOCACHE", "GOPATH", "GOMODCACHE":
			continue
		}
		env = append(env, kv)
	}
	return env
}
