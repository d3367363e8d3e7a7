package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/kura-oci/kura/registry/registrytest"
)

// TestPullDebugLogs (issue 18): --debug (and --log-level=debug) log to stderr the registry
// pulled from, the credential's source (never the secret), each layer's partial or full pull and
// why, the ranges fetched and the phases' times; the default level logs none of it, and a
// bad --log-level is a usage error.
func TestPullDebugLogs(t *testing.T) {
	work := t.TempDir()
	imgTar := filepath.Join(work, "img.tar")
	writeTar(t, imgTar, map[string]string{"etc/a": "debug logs\n", "usr/b": strings.Repeat("b", 10000)}, false)
	reg := registrytest.New(t)
	creds := []string{"--creds", registrytest.Username + ":" + registrytest.Password, "--tls-verify=false"}
	src := filepath.Join(work, "src")
	kuraOK(t, src, "import", imgTar, "img")
	ref := reg.Host + "/logs/app:v1"
	kuraOK(t, src, append([]string{"push", "img", ref}, creds...)...)

	_, errOut, code := kuraRun(t, filepath.Join(work, "s1"), append([]string{"pull", "--debug", ref}, creds...)...)
	if code != 0 {
		t.Fatalf("pull --debug: exit %d\n%s", code, errOut)
	}
	for _, want := range []string{
		`level=DEBUG msg="pulling from" registry=` + reg.Host,
		`msg=credentials registry=` + reg.Host + ` source=--creds`,
		`msg="layer: partial pull"`,
		`msg="layer: fetching ranges"`,
		`msg="layer: done"`, `mode=partial`, `bytesRequested=`,
		`msg="image stored"`, `seconds=`,
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("pull --debug: stderr lacks %q:\n%s", want, errOut)
		}
	}
	if strings.Contains(errOut, registrytest.Password) {
		t.Errorf("pull --debug logged the password:\n%s", errOut)
	}

	_, errOut, code = kuraRun(t, filepath.Join(work, "s2"), append([]string{"pull", "--log-level=debug", "--full", ref}, creds...)...)
	if code != 0 || !strings.Contains(errOut, `msg="layer: full pull"`) || !strings.Contains(errOut, `reason="partial pulls are off (--full)"`) {
		t.Errorf("pull --log-level=debug --full: exit %d, want the full-pull decision and its reason:\n%s", code, errOut)
	}

	_, errOut, code = kuraRun(t, filepath.Join(work, "s3"), append([]string{"pull", ref}, creds...)...)
	if code != 0 || strings.Contains(errOut, "level=") || strings.Contains(errOut, "pulling from") {
		t.Errorf("pull: exit %d, logs at the default level:\n%s", code, errOut)
	}

	_, errOut, code = kuraRun(t, filepath.Join(work, "s4"), "images", "--log-level=loud")
	if code != 2 || !strings.Contains(errOut, "--log-level") {
		t.Errorf("--log-level=loud: exit %d, want 2 naming the flag:\n%s", code, errOut)
	}
}

// TestPushCopyDebugLogs (issue 18): --debug logs what push and copy do with each layer (recompressed
// or copied by digest; uploaded, found at the destination or mounted, with its bytes and time),
// the config and the manifest; the default level logs none of it.
func TestPushCopyDebugLogs(t *testing.T) {
	work := t.TempDir()
	imgTar := filepath.Join(work, "img.tar")
	writeTar(t, imgTar, map[string]string{"etc/a": "push logs\n", "usr/b": strings.Repeat("b", 10000)}, false)
	reg := registrytest.New(t)
	creds := []string{"--creds", registrytest.Username + ":" + registrytest.Password, "--tls-verify=false"}
	root := filepath.Join(work, "store")
	kuraOK(t, root, "import", imgTar, "img")
	ref := reg.Host + "/logs/push:v1"
	expect := func(what string, errOut string, wants ...string) {
		t.Helper()
		for _, want := range wants {
			if !strings.Contains(errOut, want) {
				t.Errorf("%s: stderr lacks %q:\n%s", what, want, errOut)
			}
		}
	}

	_, errOut, code := kuraRun(t, root, append([]string{"push", "--debug", "img", ref}, creds...)...)
	if code != 0 {
		t.Fatalf("push --debug: exit %d\n%s", code, errOut)
	}
	expect("push --debug", errOut, `msg="writing image" destination=docker://`+ref, `msg="layer: start"`, `action="recompress to zstd:chunked"`,
		`msg="layer: done"`, `status=uploaded`, `inputBytes=`, `seconds=`, `msg=config`, `msg=manifest`)
	_, errOut, _ = kuraRun(t, root, append([]string{"push", "--debug", "img", ref}, creds...)...)
	expect("second push --debug", errOut, `status=existed`)

	_, errOut, code = kuraRun(t, root, append([]string{"copy", "--debug", "docker://" + ref, "docker://" + reg.Host + "/logs/copy:v1"}, creds...)...)
	if code != 0 {
		t.Fatalf("copy --debug: exit %d\n%s", code, errOut)
	}
	expect("copy --debug", errOut, `action="copy by digest"`, `status=mounted`, `msg=manifest`, `unchanged=true`)

	_, errOut, _ = kuraRun(t, root, append([]string{"push", "img", reg.Host + "/logs/quiet:v1"}, creds...)...)
	if strings.Contains(errOut, "level=") {
		t.Errorf("push: logs at the default level:\n%s", errOut)
	}
}
