package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// registry is a Debian docker-registry (distribution 2.8) process serving a
// filesystem root on loopback.
type registry struct {
	Addr string
	// Log is the registry's access log (its stdout): one line per request
	// with status and body bytes, read by accessLog.
	Log  string
	cmd  *exec.Cmd
	done chan error
}

// startRegistry starts a registry on root and waits until /v2/ answers. With
// fresh, root is wiped first.
func startRegistry(ctx context.Context, root string, fresh bool) (*registry, error) {
	if fresh {
		if err := os.RemoveAll(root); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "data"), 0o755); err != nil {
		return nil, err
	}
	addr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(root, "data"), addr)
	// The files the registry writes are made new, never written through: a
	// work dir seeded with `cp -al` shares them with the one it came from.
	for _, f := range []string{"config.yml", "registry.log", "access.log"} {
		if err := os.Remove(filepath.Join(root, f)); err != nil && !os.IsNotExist(err) {
			return nil, err
		}
	}
	confPath := filepath.Join(root, "config.yml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(root, "registry.log"))
	if err != nil {
		return nil, err
	}
	accessPath := filepath.Join(root, "access.log")
	accessf, err := os.Create(accessPath)
	if err != nil {
		logf.Close()
		return nil, err
	}
	cmd := exec.Command("docker-registry", "serve", confPath)
	cmd.Stdout, cmd.Stderr = accessf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		accessf.Close()
		return nil, fmt.Errorf("starting docker-registry: %w", err)
	}
	r := &registry{Addr: addr, Log: accessPath, cmd: cmd, done: make(chan error, 1)}
	go func() { r.done <- cmd.Wait(); logf.Close(); accessf.Close() }()
	if err := waitHTTP(ctx, "http://"+addr+"/v2/", r.done); err != nil {
		r.Stop()
		return nil, fmt.Errorf("docker-registry did not come up (log %s): %w", logf.Name(), err)
	}
	return r, nil
}

// Stop terminates the registry and waits for it.
func (r *registry) Stop() {
	if r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	r.cmd.Process = nil
}

// waitHTTP polls url until it answers 200 or 401, for at most 200 tries.
func waitHTTP(ctx context.Context, u string, exited <-chan error) error {
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for range 200 {
		resp, err := client.Get(u)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		select {
		case err := <-exited:
			return fmt.Errorf("process exited: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return fmt.Errorf("gave up after 200 tries: %w", last)
}

func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Request is one request the proxy forwarded.
type Request struct {
	Label     string `json:"label"`
	Method    string `json:"method"`
	Path      string `json:"path"`
	Status    int    `json:"status"`
	Range     string `json:"range,omitempty"`
	Ranges    int    `json:"ranges,omitempty"`   // number of byte ranges asked for
	Requested int64  `json:"requested"`          // bytes asked for: sum of ranges, or the whole body
	Received  int64  `json:"received"`           // response body bytes sent to the client
	Uploaded  int64  `json:"uploaded,omitempty"` // request body bytes
	Millis    int64  `json:"millis"`
	// UserAgent is set for requests read from the registry's access log.
	UserAgent string `json:"userAgent,omitempty"`
}

// proxy is a loopback reverse proxy that records every request under the
// current label, so one pull's traffic can be summed exactly.
type proxy struct {
	Addr string
	srv  *http.Server

	mu    sync.Mutex
	label string
	log   []Request
}

func startProxy(target string) (*proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{Addr: l.Addr().String()}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	// The client's Host header is passed on, so the registry's Location
	// headers (upload URLs) point back at the proxy.
	rp.ErrorLog = log.New(io.Discard, "", 0)
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		body := &countReader{r: r.Body}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = body
		}
		cw := &countingResponse{ResponseWriter: w, status: http.StatusOK}
		rp.ServeHTTP(cw, r)
		req := Request{Method: r.Method, Path: r.URL.Path, Status: cw.status, Range: r.Header.Get("Range"),
			Received: cw.n, Uploaded: body.n, Millis: time.Since(start).Milliseconds()}
		req.Ranges, req.Requested = requestedBytes(req.Range, cw.n)
		if r.Method == http.MethodHead {
			req.Requested = 0
		}
		p.mu.Lock()
		req.Label = p.label
		p.log = append(p.log, req)
		p.mu.Unlock()
	})}
	go func() {
		if err := p.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("proxy: %v", err)
		}
	}()
	return p, nil
}

// Begin labels the requests that follow and returns the index to pass to Since.
func (p *proxy) Begin(label string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.label = label
	return len(p.log)
}

// Since returns the requests recorded from mark on.
func (p *proxy) Since(mark int) []Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Request(nil), p.log[mark:]...)
}

func (p *proxy) Close() { _ = p.srv.Close() }

// requestedBytes sums the byte ranges of a Range header ("bytes=a-b,c-d").
// Without a usable header the request asked for the whole body.
func requestedBytes(h string, body int64) (int, int64) {
	spec, ok := strings.CutPrefix(strings.TrimSpace(h), "bytes=")
	if !ok {
		return 0, body
	}
	var n int
	var sum int64
	for _, part := range strings.Split(spec, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(part), "-")
		if !ok {
			return 0, body
		}
		first, err1 := strconv.ParseInt(a, 10, 64)
		last, err2 := strconv.ParseInt(b, 10, 64)
		switch {
		case err1 == nil && err2 == nil && last >= first:
			sum += last - first + 1
		case a == "" && err2 == nil: // suffix range: the last b bytes
			sum += last
		default: // open-ended "a-": as much as was sent for it
			return 0, body
		}
		n++
	}
	return n, sum
}

type countingResponse struct {
	http.ResponseWriter
	status int
	n      int64
}

func (c *countingResponse) WriteHeader(code int) {
	c.status = code
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingResponse) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *countingResponse) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

type countReader struct {
	r io.ReadCloser
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countReader) Close() error { return c.r.Close() }

// Traffic sums a set of requests.
type Traffic struct {
	Requests      int   `json:"requests"`
	RangeRequests int   `json:"rangeRequests"`
	Ranges        int   `json:"ranges"`
	IgnoredRange  int   `json:"ignoredRange"`  // GETs with a Range header answered 200 (whole body)
	PlainBlobGets int   `json:"plainBlobGets"` // blob GETs without Range (config, or a full layer)
	Requested     int64 `json:"requested"`
	Received      int64 `json:"received"`
	BlobRequested int64 `json:"blobRequested"`
	BlobReceived  int64 `json:"blobReceived"`
	Uploaded      int64 `json:"uploaded,omitempty"`
}

func sumTraffic(reqs []Request) Traffic {
	var t Traffic
	for _, r := range reqs {
		t.Requests++
		t.Requested += r.Requested
		t.Received += r.Received
		t.Uploaded += r.Uploaded
		if r.Range != "" {
			t.RangeRequests++
			t.Ranges += r.Ranges
		}
		if r.Method == http.MethodGet && strings.Contains(r.Path, "/blobs/") {
			t.BlobRequested += r.Requested
			t.BlobReceived += r.Received
			if r.Range == "" {
				t.PlainBlobGets++
			}
		}
		if r.Range != "" && r.Status == http.StatusOK {
			t.IgnoredRange++
		}
	}
	return t
}
