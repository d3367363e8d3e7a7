package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// accessLog reads the registry's own access log, so that timed pulls go
// straight to the registry (no proxy in the timed path) and their bytes are
// still counted, by the registry itself.
//
// docker-registry (distribution 2.8) writes one line per request in Apache's
// combined format to its stdout, through gorilla's logging handler, which is
// the outermost handler: the line is written when the request's handler
// returns, and the byte count is the response body the handler wrote
// (multipart/byteranges boundaries included: what the client received). The
// log has no Range header, so "requested" bytes are not known from it; an
// untimed pass through the counting proxy gives those.
//
// Lines carry no label, so a pull's lines are found between two marker
// requests (GET /v2/?bench-mark=N) sent before and after it: the registry
// logs a request before its last bytes leave, and the marker is sent after
// the puller has exited, so every request of the pull is logged before the
// closing marker. Each line keeps its User-Agent, which the caller checks.
type accessLog struct {
	path   string // the registry's stdout
	addr   string // the registry, for marker requests
	off    int64  // bytes of path already parsed
	rest   []byte // an incomplete last line
	marks  int
	lines  []Request
	client *http.Client
}

func newAccessLog(path, addr string) *accessLog {
	return &accessLog{path: path, addr: addr, client: &http.Client{Timeout: 10 * time.Second}}
}

// combinedRE matches a combined-format line:
// host ident user [time] "METHOD URI PROTO" status bytes "referer" "agent".
var combinedRE = regexp.MustCompile(`^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+)[^"]*" (\d{3}) (\d+|-) "[^"]*" "([^"]*)"`)

// parseAccessLine turns one combined-format line into a Request (Received
// is the logged body size). ok is false for lines in another format (the
// registry's own messages).
func parseAccessLine(line string) (Request, bool) {
	m := combinedRE.FindStringSubmatch(line)
	if m == nil {
		return Request{}, false
	}
	status, _ := strconv.Atoi(m[3])
	var n int64
	if m[4] != "-" {
		n, _ = strconv.ParseInt(m[4], 10, 64)
	}
	return Request{Method: m[1], Path: m[2], Status: status, Received: n, UserAgent: m[5]}, true
}

// Mark returns the position after every request logged so far; pass it to
// Since after the measured command.
func (a *accessLog) Mark(ctx context.Context) (int, error) {
	if err := a.sync(ctx); err != nil {
		return 0, err
	}
	return len(a.lines), nil
}

// Since returns the requests logged from mark on (marker requests left out).
func (a *accessLog) Since(ctx context.Context, mark int) ([]Request, error) {
	if err := a.sync(ctx); err != nil {
		return nil, err
	}
	return append([]Request(nil), a.lines[mark:]...), nil
}

// sync sends a marker request and reads the log until its line appears.
func (a *accessLog) sync(ctx context.Context) error {
	a.marks++
	uri := fmt.Sprintf("/v2/?bench-mark=%d", a.marks)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.addr+uri, nil)
	if err != nil {
		return err
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("access log marker: %w", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		found, err := a.readNew(uri)
		if err != nil || found {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("access log %s: marker %s not logged within 10 s (is accesslog enabled?)", a.path, uri)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// readNew parses what the log gained since the last read and reports
// whether the marker line uri was among it.
func (a *accessLog) readNew(uri string) (bool, error) {
	f, err := os.Open(a.path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, a.off, 1<<40))
	if err != nil {
		return false, err
	}
	a.off += int64(len(b))
	b = append(a.rest, b...)
	end := bytes.LastIndexByte(b, '\n') + 1
	a.rest = append([]byte(nil), b[end:]...)
	found := false
	for _, line := range strings.Split(string(b[:end]), "\n") {
		r, ok := parseAccessLine(line)
		switch {
		case !ok:
		case strings.HasPrefix(r.Path, "/v2/?bench-mark="):
			found = found || r.Path == uri
		default:
			a.lines = append(a.lines, r)
		}
	}
	return found, nil
}
