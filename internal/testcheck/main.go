// Command testcheck reads `go test -json` on stdin and fails the run when any test failed or
// was skipped: a skipped test still lets go test print ok, and CI must not call a run whose
// byte-identity, hostile-input or crash tests did not run a pass. It prints the plain go test
// closing lines (ok, FAIL, ?), the output of each failed test and of each failed build, and at the
// end every skipped test with the reason it gave.
//
//	go test -json ./... | go run ./internal/testcheck
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

func main() {
	if err := check(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "testcheck:", err)
		os.Exit(1)
	}
}

// event is one line of go test -json (cmd/test2json), with build output from go 1.24 on.
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string
}

type key struct{ pkg, test string }

type skip struct {
	key
	reason string
}

type checker struct {
	out     io.Writer
	running map[key][]string // output of each test not yet ended
	skips   []skip
	failed  []key
	builds  int // failed builds
	passed  int
	events  int
}

// check reads the events from r, writes the report to w, and returns an error when any test
// failed or skipped, a build failed, or the input held no test events at all.
func check(r io.Reader, w io.Writer) error {
	c := &checker{out: w, running: map[key][]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			// go test prints some errors (a package that does not exist) as plain text.
			fmt.Fprintf(w, "%s\n", line)
			continue
		}
		c.events++
		c.handle(e)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading go test -json: %w", err)
	}
	return c.verdict()
}

func (c *checker) handle(e event) {
	k := key{e.Package, e.Test}
	switch e.Action {
	case "build-output":
		fmt.Fprint(c.out, e.Output)
	case "build-fail":
		c.builds++
	case "output":
		if e.Test == "" {
			if keepPackageLine(e.Output) {
				fmt.Fprint(c.out, e.Output)
			}
			return
		}
		c.running[k] = append(c.running[k], e.Output)
	case "pass":
		if e.Test != "" {
			c.passed++
		}
		delete(c.running, k)
	case "skip":
		if e.Test != "" {
			c.skips = append(c.skips, skip{k, reason(c.running[k])})
		}
		delete(c.running, k)
	case "fail":
		if e.Test != "" {
			c.failed = append(c.failed, k)
			fmt.Fprint(c.out, strings.Join(c.running[k], ""))
		} else if len(c.failed) == 0 || c.failed[len(c.failed)-1].pkg != e.Package {
			// A package that failed without a failed test: a panic, a timeout, TestMain.
			c.failed = append(c.failed, k)
		}
		delete(c.running, k)
	}
}

// keepPackageLine keeps go test's closing lines and whatever a package printed outside its tests,
// and drops the verbose-mode chatter that -json turns on.
func keepPackageLine(s string) bool {
	return s != "PASS\n" && !strings.HasPrefix(s, "=== ") && !strings.HasPrefix(s, "testing: warning: no tests")
}

// reason is what a skipped test logged, without go test's own lines.
func reason(lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(" | ")
		}
		b.WriteString(t)
	}
	if b.Len() == 0 {
		return "(no reason given)"
	}
	return b.String()
}

func (c *checker) verdict() error {
	sort.Slice(c.skips, func(i, j int) bool {
		a, b := c.skips[i], c.skips[j]
		return a.pkg < b.pkg || a.pkg == b.pkg && a.test < b.test
	})
	for _, s := range c.skips {
		fmt.Fprintf(c.out, "SKIP %s %s: %s\n", s.pkg, s.test, s.reason)
	}
	fmt.Fprintf(c.out, "testcheck: %d passed, %d skipped, %d failed, %d builds failed\n",
		c.passed, len(c.skips), len(c.failed), c.builds)
	switch {
	case c.events == 0:
		return fmt.Errorf("no go test -json events on stdin")
	case c.builds > 0 || len(c.failed) > 0:
		return fmt.Errorf("%d failed tests or packages, %d failed builds", len(c.failed), c.builds)
	case len(c.skips) > 0:
		return fmt.Errorf("%d tests skipped; a skipped test is a failure here (see above)", len(c.skips))
	}
	return nil
}
