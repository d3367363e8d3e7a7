package registrytest

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// FaultKind selects how the proxy misbehaves on blob GETs. Other requests pass through untouched.
type FaultKind int

const (
	// None forwards everything.
	None FaultKind = iota
	// IgnoreRange drops the Range header upstream, so the answer is 200 with the whole blob (S3).
	IgnoreRange
	// RejectMultiRange answers Status (400 GCR, 416 old zot, 501 GHCR) to requests with more than one range.
	RejectMultiRange
	// DropAfter sends AfterBytes bytes of the body, then closes the connection.
	DropAfter
	// ServerError answers 500.
	ServerError
	// TooManyRequests answers 429 with Retry-After: RetryAfter.
	TooManyRequests
	// WrongContentRange answers ranges shifted by one byte, with a Content-Range saying so.
	WrongContentRange
	// UnquotedBoundary answers multi-range requests with multipart/byteranges whose boundary
	// contains ':' and is not quoted (CloudFront).
	UnquotedBoundary
	// Redirect answers 307 to a blob store on another loopback host, which serves ranges itself
	// and records whether an Authorization header reached it.
	Redirect
	// RejectAllRanges answers Status to every request carrying a Range header.
	RejectAllRanges
	// CorruptBody flips the first body byte of blob answers (digest checks must catch it).
	CorruptBody
	// CorruptManifest appends a space to manifest bodies: still JSON, another digest. It applies
	// to manifest GETs instead of blob GETs.
	CorruptManifest
	// Stall sends the headers and AfterBytes bytes of the body, then nothing, holding the
	// connection open until the client gives up.
	Stall
	// Trickle sends the body one byte every Interval.
	Trickle
)

// Fault is one proxy behaviour. Times > 0 limits it to the first Times blob GETs after SetFault;
// later ones pass through (a transient fault). Times == 0 means every blob GET.
type Fault struct {
	Kind       FaultKind
	Status     int           // RejectMultiRange
	AfterBytes int64         // DropAfter
	RetryAfter string        // TooManyRequests, e.g. "1"
	Interval   time.Duration // Trickle
	Times      int
	// Digest, if set, limits the fault to GETs of that blob; others pass (and do not count
	// against Times).
	Digest digest.Digest
}

// BlobRequest records one blob GET the proxy answered.
type BlobRequest struct {
	Digest      digest.Digest // the blob asked for
	Range       string        // the Range header as received
	Status      int
	BytesServed int64 // body bytes written to the client
	Faulted     bool
}

// Proxy sits between clients and the registry.
type Proxy struct {
	host     string
	upstream string
	client   *http.Client

	mu        sync.Mutex
	fault     Fault
	remaining int
	blobReqs  []BlobRequest
	// active counts blob GETs being answered; BlobRequests waits (on idle) until it is zero, since a
	// client can see the end of a body before the handler has logged it.
	active int
	idle   *sync.Cond

	store     *httptest.Server
	storeMu   sync.Mutex
	stash     map[string][]byte
	storeAuth []string
}

func newProxy(t testing.TB, upstream string, tlsCfg *tls.Config) *Proxy {
	p := &Proxy{
		upstream: upstream,
		// No redirects, no connection reuse surprises: one upstream request per client request.
		client: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
		stash:  map[string][]byte{},
	}
	p.idle = sync.NewCond(&p.mu)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(p.serve))
	startServer(srv, tlsCfg)
	t.Cleanup(srv.Close)
	p.host = srv.Listener.Addr().String()

	// The blob store lives on 127.0.0.2 when the kernel allows it (Linux routes all of
	// 127.0.0.0/8 to lo), so it is a different host, not only a different port.
	store := httptest.NewUnstartedServer(http.HandlerFunc(p.serveStore))
	if l, err := net.Listen("tcp", "127.0.0.2:0"); err == nil {
		store.Listener.Close()
		store.Listener = l
	}
	store.Start()
	t.Cleanup(store.Close)
	p.store = store
	return p
}

// SetFault switches the behaviour and resets the request log.
func (p *Proxy) SetFault(f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault, p.remaining, p.blobReqs = f, f.Times, nil
	p.storeMu.Lock()
	p.storeAuth = nil
	p.storeMu.Unlock()
}

// BlobRequests returns the blob GETs answered since the last SetFault, in order.
func (p *Proxy) BlobRequests() []BlobRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.active > 0 {
		p.idle.Wait()
	}
	return append([]BlobRequest(nil), p.blobReqs...)
}

// BytesServed sums the blob body bytes sent since the last SetFault.
func (p *Proxy) BytesServed() int64 {
	var n int64
	for _, r := range p.BlobRequests() {
		n += r.BytesServed
	}
	return n
}

// StoreAuthorizations returns the Authorization headers the redirect target received ("" for none).
func (p *Proxy) StoreAuthorizations() []string {
	p.storeMu.Lock()
	defer p.storeMu.Unlock()
	return append([]string(nil), p.storeAuth...)
}

// take decides whether this GET of blob d gets the fault.
func (p *Proxy) take(d digest.Digest) (Fault, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fault.Kind == None || p.fault.Kind == CorruptManifest || p.fault.Digest != "" && p.fault.Digest != d {
		return p.fault, false
	}
	if p.fault.Times > 0 {
		if p.remaining == 0 {
			return p.fault, false
		}
		p.remaining--
	}
	return p.fault, true
}

func (p *Proxy) record(r BlobRequest) {
	p.mu.Lock()
	p.blobReqs = append(p.blobReqs, r)
	p.active--
	p.idle.Broadcast()
	p.mu.Unlock()
}

func isBlobGET(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") && !strings.Contains(r.URL.Path, "/blobs/uploads")
}

// countingWriter counts body bytes and can abort the connection after a limit.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
	limit  int64           // <0: none
	stall  <-chan struct{} // if set, at the limit wait for it (the client leaving) instead of closing
}

func (w *countingWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.limit >= 0 && w.n+int64(len(b)) > w.limit {
		b = b[:w.limit-w.n]
		n, _ := w.ResponseWriter.Write(b)
		w.n += int64(n)
		w.ResponseWriter.(http.Flusher).Flush()
		if w.stall != nil {
			<-w.stall
		}
		// The server closes the connection without finishing the response.
		panic(http.ErrAbortHandler)
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

func isManifestGET(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/")
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	if isManifestGET(r) {
		p.mu.Lock()
		corrupt := p.fault.Kind == CorruptManifest
		p.mu.Unlock()
		if corrupt {
			p.serveCorruptManifest(w, r)
			return
		}
	}
	if !isBlobGET(r) {
		p.forward(w, r, r.Header, -1)
		return
	}
	p.mu.Lock()
	p.active++
	p.mu.Unlock()
	f, faulted := p.take(digest.Digest(path.Base(r.URL.Path)))
	cw := &countingWriter{ResponseWriter: w, limit: -1}
	rec := BlobRequest{Digest: digest.Digest(path.Base(r.URL.Path)), Range: r.Header.Get("Range"), Faulted: faulted}
	defer func() {
		rec.Status, rec.BytesServed = cw.status, cw.n
		p.record(rec)
	}()
	if !faulted {
		p.forward(cw, r, r.Header, -1)
		return
	}
	switch f.Kind {
	case IgnoreRange:
		h := r.Header.Clone()
		h.Del("Range")
		p.forward(cw, r, h, -1)
	case RejectMultiRange:
		if strings.Contains(r.Header.Get("Range"), ",") {
			http.Error(cw, "multiple ranges are not supported", f.Status)
			return
		}
		p.forward(cw, r, r.Header, -1)
	case DropAfter:
		cw.limit = f.AfterBytes
		p.forward(cw, r, r.Header, -1)
	case Stall:
		cw.limit, cw.stall = f.AfterBytes, r.Context().Done()
		p.forward(cw, r, r.Header, -1)
	case Trickle:
		p.forward(&trickleWriter{countingWriter: cw, every: f.Interval, done: r.Context().Done()}, r, r.Header, -1)
	case RejectAllRanges:
		if r.Header.Get("Range") != "" {
			http.Error(cw, "ranges are not supported", f.Status)
			return
		}
		p.forward(cw, r, r.Header, -1)
	case CorruptBody:
		p.forward(&flipWriter{countingWriter: cw}, r, r.Header, -1)
	case ServerError:
		http.Error(cw, "injected failure", http.StatusInternalServerError)
	case TooManyRequests:
		cw.Header().Set("Retry-After", f.RetryAfter)
		http.Error(cw, "slow down", http.StatusTooManyRequests)
	case WrongContentRange, UnquotedBoundary, Redirect:
		if f.Kind != Redirect && r.Header.Get("Range") == "" {
			rec.Faulted = false // these faults are about range answers; a plain GET passes
			p.forward(cw, r, r.Header, -1)
			return
		}
		blob, ok := p.fetchWhole(cw, r)
		if !ok {
			return
		}
		switch f.Kind {
		case Redirect:
			id := fmt.Sprint(time.Now().UnixNano())
			p.storeMu.Lock()
			p.stash[id] = blob
			p.storeMu.Unlock()
			http.Redirect(cw, r, p.store.URL+"/objects/"+id, http.StatusTemporaryRedirect)
		case WrongContentRange:
			serveRanges(cw, r, blob, 1, `"kura-boundary"`)
		case UnquotedBoundary:
			serveRanges(cw, r, blob, 0, "CloudFront:5A3E7B19C2D4")
		}
	}
}

// forward relays r upstream with header h and copies the answer back.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, h http.Header, _ int64) {
	out, err := http.NewRequestWithContext(r.Context(), r.Method, p.upstream+r.URL.RequestURI(), r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = h.Clone()
	out.ContentLength = r.ContentLength
	resp, err := p.client.Do(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

// trickleWriter writes one byte per interval, until the client leaves.
type trickleWriter struct {
	*countingWriter
	every time.Duration
	done  <-chan struct{}
}

func (w *trickleWriter) Write(b []byte) (int, error) {
	t := time.NewTicker(w.every)
	defer t.Stop()
	for i := range b {
		if _, err := w.countingWriter.Write(b[i : i+1]); err != nil {
			return i, err
		}
		w.ResponseWriter.(http.Flusher).Flush()
		select {
		case <-t.C:
		case <-w.done:
			return i + 1, http.ErrAbortHandler
		}
	}
	return len(b), nil
}

// flipWriter flips the first body byte.
type flipWriter struct {
	*countingWriter
	done bool
}

func (w *flipWriter) Write(b []byte) (int, error) {
	if !w.done && len(b) > 0 {
		w.done = true
		c := append([]byte(nil), b...)
		c[0] ^= 0xff
		return w.countingWriter.Write(c)
	}
	return w.countingWriter.Write(b)
}

func (p *Proxy) serveCorruptManifest(w http.ResponseWriter, r *http.Request) {
	out, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, p.upstream+r.URL.RequestURI(), nil)
	out.Header = r.Header.Clone()
	resp, err := p.client.Do(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	if resp.StatusCode == http.StatusOK {
		body = append(body, ' ')
		w.Header().Del("Docker-Content-Digest")
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(resp.StatusCode)
	w.Write(body)
}

// fetchWhole GETs the whole blob upstream with the client's credentials; on failure it relays
// the upstream answer (e.g. the 401 challenge) and returns false.
func (p *Proxy) fetchWhole(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	out, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, p.upstream+r.URL.RequestURI(), nil)
	out.Header = r.Header.Clone()
	out.Header.Del("Range")
	resp, err := p.client.Do(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return nil, false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		for k, vs := range resp.Header {
			w.Header()[k] = vs
		}
		w.WriteHeader(resp.StatusCode)
		w.Write(body)
		return nil, false
	}
	return body, true
}

func (p *Proxy) serveStore(w http.ResponseWriter, r *http.Request) {
	id := strings.TrimPrefix(r.URL.Path, "/objects/")
	p.storeMu.Lock()
	p.storeAuth = append(p.storeAuth, r.Header.Get("Authorization"))
	blob, ok := p.stash[id]
	p.storeMu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
}

type byteRange struct{ start, end int64 } // inclusive

// parseRangeHeader reads "bytes=a-b,c-,…" against a blob of size n.
func parseRangeHeader(h string, n int64) ([]byteRange, bool) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return nil, false
	}
	var out []byteRange
	for _, part := range strings.Split(spec, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(part), "-")
		if !ok {
			return nil, false
		}
		start, err := strconv.ParseInt(a, 10, 64)
		if err != nil || start >= n {
			return nil, false
		}
		end := n - 1
		if b != "" {
			if end, err = strconv.ParseInt(b, 10, 64); err != nil || end < start {
				return nil, false
			}
			end = min(end, n-1)
		}
		out = append(out, byteRange{start, end})
	}
	return out, true
}

// serveRanges answers a Range request itself: each range is moved by shift bytes (a wrong
// answer when shift != 0), multiple ranges use the boundary exactly as given (quoted or not).
func serveRanges(w http.ResponseWriter, r *http.Request, blob []byte, shift int64, boundary string) {
	n := int64(len(blob))
	ranges, ok := parseRangeHeader(r.Header.Get("Range"), n)
	if !ok {
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.WriteHeader(http.StatusOK)
		w.Write(blob)
		return
	}
	for i := range ranges {
		ranges[i].start = min(ranges[i].start+shift, n-1)
		ranges[i].end = min(ranges[i].end+shift, n-1)
	}
	if len(ranges) == 1 {
		br := ranges[0]
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", br.start, br.end, n))
		w.Header().Set("Content-Length", strconv.FormatInt(br.end-br.start+1, 10))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(blob[br.start : br.end+1])
		return
	}
	b := strings.Trim(boundary, `"`)
	var body bytes.Buffer
	for _, br := range ranges {
		fmt.Fprintf(&body, "\r\n--%s\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes %d-%d/%d\r\n\r\n", b, br.start, br.end, n)
		body.Write(blob[br.start : br.end+1])
	}
	fmt.Fprintf(&body, "\r\n--%s--\r\n", b)
	w.Header().Set("Content-Type", "multipart/byteranges; boundary="+boundary)
	w.Header().Set("Content-Length", strconv.Itoa(body.Len()))
	w.WriteHeader(http.StatusPartialContent)
	w.Write(body.Bytes())
}
