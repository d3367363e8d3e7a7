package main

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestImagesLikePodman (issue 18): kura images has podman's columns, -q, --no-trunc, --digests,
// --filter (reference, dangling, before, since), Go-template --format and --format json, and
// shows an image without a name as <none> <none>.
func TestImagesLikePodman(t *testing.T) {
	work := t.TempDir()
	st := filepath.Join(work, "store")
	names := []string{"one:v1", "example.com/two:v2", "three"}
	ids := map[string]string{}
	for i, n := range names {
		tarPath := filepath.Join(work, n[:3]+".tar")
		writeTar(t, tarPath, map[string]string{"etc/n": strings.Repeat(n, i+1)}, false)
		out := kuraOK(t, st, "import", tarPath, n)
		ids[n] = strings.Fields(out)[1]
	}
	// rmi of a checked-out image leaves it without a name (<none>) until the checkout ends.
	kuraOK(t, st, "checkout", "three", filepath.Join(work, "co"))
	kuraOK(t, st, "rmi", "--force", "three")
	short := func(n string) string { return strings.TrimPrefix(ids[n], "sha256:")[:12] }

	out := kuraOK(t, st, "images")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !regexp.MustCompile(`^REPOSITORY +TAG +IMAGE ID +CREATED +SIZE$`).MatchString(lines[0]) {
		t.Fatalf("images:\n%s", out)
	}
	for _, want := range []string{
		`<none> +<none> +` + short("three") + ` +(Less than a second|\d+ seconds) ago +\d+ B`,
		`example.com/two +v2 +` + short("example.com/two:v2") + ` +`,
		`one +v1 +` + short("one:v1") + ` +`,
	} {
		if !regexp.MustCompile(`(?m)^` + want).MatchString(out) {
			t.Errorf("images lacks a row %q:\n%s", want, out)
		}
	}

	lists := []struct {
		args []string
		want []string
	}{
		{[]string{"-q"}, []string{short("three"), short("example.com/two:v2"), short("one:v1")}},
		{[]string{"-q", "--no-trunc", "--filter", "dangling=true"}, []string{ids["three"]}},
		{[]string{"-q", "--filter", "dangling=false"}, []string{short("example.com/two:v2"), short("one:v1")}},
		{[]string{"-q", "--filter", "reference=example.com/*"}, []string{short("example.com/two:v2")}},
		{[]string{"-q", "--filter", "reference=one", "--filter", "reference=nothing*"}, []string{short("one:v1")}},
		{[]string{"-q", "--filter", "since=one:v1"}, []string{short("three"), short("example.com/two:v2")}},
		{[]string{"-q", "--filter", "before=example.com/two:v2", "--filter", "dangling=false"}, []string{short("one:v1")}},
		{[]string{"-q", "--filter", "reference=nothing"}, nil},
		{[]string{"--format", "{{.Repository}}:{{.Tag}} {{.ID}} {{.Digest}}", "--filter", "reference=one"},
			[]string{"one:v1 " + short("one:v1") + " " + ids["one:v1"]}},
	}
	for _, l := range lists {
		out := kuraOK(t, st, append([]string{"images"}, l.args...)...)
		if got, want := out, strings.Join(append(l.want, ""), "\n"); got != want && !(len(l.want) == 0 && got == "") {
			t.Errorf("images %s:\n%s\nwant:\n%s", strings.Join(l.args, " "), out, strings.Join(l.want, "\n"))
		}
	}

	if out := kuraOK(t, st, "images", "--format", "table {{.Repository}}\t{{.Size}}", "--filter", "reference=one"); !regexp.MustCompile(`^REPOSITORY +SIZE\none +\d+ B\n$`).MatchString(out) {
		t.Errorf("images --format table:\n%q", out)
	}
	if out := kuraOK(t, st, "images", "--digests"); !strings.Contains(out, "DIGEST") || !strings.Contains(out, ids["one:v1"]) {
		t.Errorf("images --digests:\n%s", out)
	}
	if a, b := kuraOK(t, st, "images", "--format", "json"), kuraOK(t, st, "--json", "images"); a != b {
		t.Errorf("images --format json differs from --json:\n%s\n%s", a, b)
	}
	for _, bad := range [][]string{{"--filter", "label=x"}, {"--filter", "dangling=maybe"}, {"--filter", "reference"}, {"--format", "{{.Nope"}, {"--format", "{{.Nope}}"}} {
		if _, errOut, code := kuraRun(t, st, append([]string{"images"}, bad...)...); code != 2 {
			t.Errorf("images %s: exit %d, want 2\n%s", strings.Join(bad, " "), code, errOut)
		}
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "Less than a second", time.Second: "1 second", 59 * time.Second: "59 seconds", time.Minute: "About a minute",
		59 * time.Minute: "59 minutes", time.Hour: "About an hour", 47 * time.Hour: "47 hours", 72 * time.Hour: "3 days",
		15 * 24 * time.Hour: "2 weeks", 90 * 24 * time.Hour: "3 months", 800 * 24 * time.Hour: "2 years",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%s) = %q, want %q", d, got, want)
		}
	}
	for n, want := range map[int64]string{0: "0 B", 999: "999 B", 1000: "1 kB", 1234567: "1.23 MB", 5 << 30: "5.37 GB"} {
		if got := humanSize(n); got != want {
			t.Errorf("humanSize(%d) = %q, want %q", n, got, want)
		}
	}
}
