package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUnprivileged runs id and the kura binary as uid 65534: the ids are the unprivileged
// user's, HOME is its own directory, and kura can write its default store there.
func TestUnprivileged(t *testing.T) {
	home := UnprivilegedHome(t)
	out, err := Unprivileged(t, home, "sh", "-c", `id -u; id -g; id -G; echo "$HOME"`).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := "65534\n65534\n65534\n" + home + "\n"
	if string(out) != want {
		t.Fatalf("got %q, want %q", out, want)
	}
	kura := Kura(t)
	if out, err := Unprivileged(t, home, kura, "images").CombinedOutput(); err != nil {
		t.Fatalf("kura images as uid 65534: %v\n%s", err, out)
	}
	if out, err := Unprivileged(t, home, "touch", "/root/x").CombinedOutput(); err == nil {
		t.Fatalf("uid 65534 could write into /root: %s", out)
	}
}

// TestKuraBuiltOnce: a second call returns the same binary without building again.
func TestKuraBuiltOnce(t *testing.T) {
	a := Kura(t)
	st, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm()&0o005 != 0o005 {
		t.Errorf("%s mode %v: others cannot run it", a, st.Mode())
	}
	if b := Kura(t); b != a {
		t.Errorf("second build at %s, first at %s", b, a)
	}
	if out, err := exec.Command(a, "--help").CombinedOutput(); err != nil || !strings.Contains(string(out), "kura") {
		t.Errorf("kura --help: %v\n%s", err, out)
	}
}

// TestSkipStrict runs a test that calls Skip in a child process, with and without
// KURA_TEST_STRICT=1: skipped without it, failed with it.
func TestSkipStrict(t *testing.T) {
	if os.Getenv("KURA_TESTKIT_CHILD") == "1" {
		Skip(t, "frobnicator missing")
		return
	}
	for _, strict := range []string{"0", "1"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSkipStrict$", "-test.v")
		cmd.Env = append(os.Environ(), "KURA_TESTKIT_CHILD=1", StrictEnv+"="+strict)
		out, err := cmd.CombinedOutput()
		switch strict {
		case "0":
			if err != nil || !strings.Contains(string(out), "--- SKIP: TestSkipStrict") {
				t.Errorf("without %s: %v\n%s", StrictEnv, err, out)
			}
		case "1":
			if err == nil || !strings.Contains(string(out), "--- FAIL: TestSkipStrict") || !strings.Contains(string(out), "frobnicator missing") {
				t.Errorf("with %s=1: %v\n%s", StrictEnv, err, out)
			}
		}
	}
}

// TestModuleRoot finds the kura module from a nested module's directory too.
func TestModuleRoot(t *testing.T) {
	root := ModuleRoot(t)
	if _, err := os.Stat(filepath.Join(root, "testdata", "composefs")); err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	defer os.Chdir(wd)
	if err := os.Chdir(filepath.Join(root, "interop")); err != nil {
		t.Fatal(err)
	}
	if got := ModuleRoot(t); got != root {
		t.Errorf("from interop/: %s, want %s", got, root)
	}
}
