package main

import (
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/kura-oci/kura/registry/registrytest"
)

// TestPullQuiet (issue 18): stdout of kura pull -q is the image ID alone, as with podman pull -q,
// and the ID names the image for other commands; without -q, progress goes to stderr and stdout
// keeps its two lines.
func TestPullQuiet(t *testing.T) {
	work := t.TempDir()
	imgTar := filepath.Join(work, "img.tar")
	writeTar(t, imgTar, map[string]string{"etc/q": "quiet\n"}, false)
	reg := registrytest.New(t)
	creds := []string{"--creds", registrytest.Username + ":" + registrytest.Password, "--tls-verify=false"}
	src, st := filepath.Join(work, "src"), filepath.Join(work, "store")
	kuraOK(t, src, "import", imgTar, "img")
	ref := reg.Host + "/quiet/app:v1"
	kuraOK(t, src, append([]string{"push", "img", ref}, creds...)...)

	out, errOut, code := kuraRun(t, st, append([]string{"pull", "-q", ref}, creds...)...)
	if code != 0 || !regexp.MustCompile(`^sha256:[0-9a-f]{64}\n$`).MatchString(out) {
		t.Fatalf("pull -q: exit %d, stdout %q, want the image ID alone\n%s", code, out, errOut)
	}
	if strings.Contains(errOut, "started") {
		t.Fatalf("pull -q showed progress:\n%s", errOut)
	}
	id := strings.TrimSpace(out)
	kuraOK(t, st, "checkout", id, filepath.Join(work, "co"))

	out, errOut, code = kuraRun(t, filepath.Join(work, "store2"), append([]string{"pull", ref}, creds...)...)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if code != 0 || len(lines) != 2 || lines[0] != ref+" "+id || !strings.HasPrefix(lines[1], "blobs ") {
		t.Fatalf("pull: exit %d, stdout:\n%s", code, out)
	}
	if !strings.Contains(errOut, "started") {
		t.Fatalf("pull: no progress on stderr:\n%s", errOut)
	}
}

// TestVersion (issue 18): kura version and kura --version name the build, as podman's do.
func TestVersion(t *testing.T) {
	root := t.TempDir()
	out := kuraOK(t, root, "version")
	for _, want := range []string{`Version: +\S+`, `Go Version: +` + regexp.QuoteMeta(runtime.Version()), `Git Commit: +\S+`, `OS/Arch: +` + runtime.GOOS + "/" + runtime.GOARCH} {
		if !regexp.MustCompile(`(?m)^` + want + `$`).MatchString(out) {
			t.Errorf("kura version lacks %q:\n%s", want, out)
		}
	}
	if out := kuraOK(t, root, "--version"); !regexp.MustCompile(`^kura version \S+`).MatchString(out) || strings.Count(out, "\n") != 1 {
		t.Errorf("kura --version: %q", out)
	}
}
