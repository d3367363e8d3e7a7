package main

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// goTestJSON runs go test -json on a throwaway package holding src, so the checker is tested on
// what go test really prints, not on a hand-written imitation.
func goTestJSON(t *testing.T, src string) []byte {
	t.Helper()
	dir := t.TempDir()
	write := func(name, s string) {
		t.Helper()
		if err := writeFile(dir+"/"+name, s); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/p\n\ngo 1.22\n")
	write("p_test.go", "package p\n\nimport \"testing\"\n\n"+src)
	cmd := exec.Command("go", "test", "-json", "-count=1", ".")
	cmd.Dir = dir
	out, _ := cmd.Output() // a failing package exits 1; the events say why
	return out
}

func TestCheckPasses(t *testing.T) {
	in := goTestJSON(t, "func TestA(t *testing.T) {}\nfunc TestB(t *testing.T) { t.Run(\"s\", func(t *testing.T) {}) }\n")
	var out bytes.Buffer
	if err := check(bytes.NewReader(in), &out); err != nil {
		t.Fatalf("check: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "ok  \texample.com/p") {
		t.Errorf("the ok line of go test is missing:\n%s", out.String())
	}
	if strings.Contains(out.String(), "=== RUN") {
		t.Errorf("verbose chatter printed:\n%s", out.String())
	}
}

func TestCheckFailsOnSkip(t *testing.T) {
	in := goTestJSON(t, "func TestA(t *testing.T) {}\nfunc TestNeedsTool(t *testing.T) { t.Skip(\"frobnicate not installed\") }\n"+
		"func FuzzSeed(f *testing.F) { f.Add(1); f.Fuzz(func(t *testing.T, i int) { t.Skip(\"seed skipped\") }) }\n")
	var out bytes.Buffer
	err := check(bytes.NewReader(in), &out)
	if err == nil {
		t.Fatalf("a run with skipped tests passed:\n%s", out.String())
	}
	for _, want := range []string{"SKIP example.com/p TestNeedsTool:", "frobnicate not installed", "FuzzSeed/seed#0", "seed skipped", "2 skipped"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

func TestCheckFailsOnFailure(t *testing.T) {
	in := goTestJSON(t, "func TestBad(t *testing.T) { t.Error(\"wrong answer\") }\n")
	var out bytes.Buffer
	if err := check(bytes.NewReader(in), &out); err == nil {
		t.Fatalf("a failed test passed:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "wrong answer") || !strings.Contains(out.String(), "FAIL\texample.com/p") {
		t.Errorf("the failure is not shown:\n%s", out.String())
	}
}

func TestCheckFailsOnBuildError(t *testing.T) {
	in := goTestJSON(t, "func TestA(t *testing.T) { undefined() }\n")
	var out bytes.Buffer
	if err := check(bytes.NewReader(in), &out); err == nil {
		t.Fatalf("a build failure passed:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "undefined") {
		t.Errorf("the compiler's message is not shown:\n%s", out.String())
	}
}

func TestCheckFailsOnPanic(t *testing.T) {
	in := goTestJSON(t, "func TestA(t *testing.T) { go func() { panic(\"boom\") }(); select {} }\n")
	var out bytes.Buffer
	if err := check(bytes.NewReader(in), &out); err == nil {
		t.Fatalf("a panicking package passed:\n%s", out.String())
	}
}

func TestCheckFailsOnNoInput(t *testing.T) {
	if err := check(strings.NewReader(""), &bytes.Buffer{}); err == nil {
		t.Fatal("empty input passed")
	}
}

func writeFile(name, s string) error { return os.WriteFile(name, []byte(s), 0o644) }
