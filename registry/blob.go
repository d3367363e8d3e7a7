package registry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/verify"
)

// FetchBlob streams a whole blob. The reader yields at most desc.Size bytes and returns an error
// wrapping errdefs.ErrDigestMismatch at EOF when the size or digest differ, so only a read that
// ended in io.EOF delivered verified content. A connection lost mid-body is resumed with a Range
// request from where it stopped.
func (c *Client) FetchBlob(ctx context.Context, repo imageref.Repository, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if err := checkDescriptor(desc); err != nil {
		return nil, fmt.Errorf("blob of %s: %w", repo, err)
	}
	rc, err := c.repo(ctx, repo, false)
	if err != nil {
		return nil, err
	}
	r := &resumingReader{ctx: ctx, c: c, client: rc.client, url: rc.url(repo, "blobs", desc.Digest.String()), size: desc.Size}
	if err := r.open(); err != nil {
		return nil, err
	}
	return verify.ReadCloser(r, desc.Size, desc.Digest), nil
}

// resumingReader reads a blob from offset 0 to size, re-requesting "bytes=pos-" after a failure.
type resumingReader struct {
	ctx    context.Context
	c      *Client
	client *http.Client
	url    string
	size   int64

	body     io.ReadCloser
	pos      int64
	failures int   // consecutive failures without progress
	progress int64 // bytes since the last failure
}

func (r *resumingReader) open() error {
	req, err := http.NewRequestWithContext(r.ctx, http.MethodGet, r.url, nil)
	if err != nil {
		return fmt.Errorf("blob %s: %v: %w", r.url, err, errdefs.ErrInvalid)
	}
	if r.pos > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", r.pos))
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return fmt.Errorf("fetching blob: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		// Full body (also when a resume was ignored): skip what we already have.
		if r.pos > 0 {
			if _, err := io.CopyN(io.Discard, resp.Body, r.pos); err != nil {
				resp.Body.Close()
				return fmt.Errorf("skipping %d bytes of a restarted blob download: %w", r.pos, err)
			}
		}
	case resp.StatusCode == http.StatusPartialContent && r.pos > 0:
		cr, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || cr.start != r.pos || (cr.total >= 0 && cr.total != r.size) {
			resp.Body.Close()
			return fmt.Errorf("resuming blob at %d: answer has Content-Range %q: %w", r.pos, resp.Header.Get("Content-Range"), errdefs.ErrInvalid)
		}
	default:
		return fmt.Errorf("fetching blob: %w", newHTTPError(resp))
	}
	r.body = resp.Body
	return nil
}

func (r *resumingReader) Read(p []byte) (int, error) {
	for {
		if r.body == nil {
			if err := r.open(); err != nil {
				return 0, err
			}
		}
		n, err := r.body.Read(p)
		r.pos += int64(n)
		if n > 0 {
			r.failures = resetFailures(r.failures, &r.progress, n)
		}
		if err == nil || err == io.EOF && r.pos >= r.size {
			return n, err
		}
		// A body that ends early (io.EOF before size, io.ErrUnexpectedEOF, a reset) is resumed.
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		r.body.Close()
		r.body = nil
		if !isTransient(r.ctx, err) || r.failures+1 >= r.c.opts.retries {
			return n, fmt.Errorf("reading blob at offset %d: %w", r.pos, err)
		}
		r.failures++
		r.progress = 0
		r.c.stats.retries.Add(1)
		if n > 0 {
			return n, nil
		}
		if err := sleep(r.ctx, backoff(&r.c.opts, r.failures-1)); err != nil {
			return 0, err
		}
	}
}

func (r *resumingReader) Close() error {
	if r.body != nil {
		return r.body.Close()
	}
	return nil
}

// contentRange is "bytes start-end/total" (end inclusive; total -1 for "*").
type contentRange struct{ start, end, total int64 }

func parseContentRange(s string) (contentRange, error) {
	bad := fmt.Errorf("Content-Range %q: %w", s, errdefs.ErrInvalid)
	rest, ok := cutPrefixFold(s, "bytes ")
	if !ok {
		return contentRange{}, bad
	}
	rng, total, ok := cut(rest, '/')
	if !ok {
		return contentRange{}, bad
	}
	a, b, ok := cut(rng, '-')
	if !ok {
		return contentRange{}, bad
	}
	var cr contentRange
	var err error
	if cr.start, err = parseUint(a); err != nil {
		return contentRange{}, bad
	}
	if cr.end, err = parseUint(b); err != nil || cr.end < cr.start {
		return contentRange{}, bad
	}
	if total == "*" {
		cr.total = -1
	} else if cr.total, err = parseUint(total); err != nil || cr.total <= cr.end {
		return contentRange{}, bad
	}
	return cr, nil
}

func parseUint(s string) (int64, error) {
	if s == "" || s[0] == '+' || s[0] == '-' {
		return 0, strconv.ErrSyntax
	}
	return strconv.ParseInt(s, 10, 64)
}

func cut(s string, sep byte) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == sep {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) {
		return s, false
	}
	for i := 0; i < len(prefix); i++ {
		a, b := s[i], prefix[i]
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if a != b {
			return s, false
		}
	}
	return s[len(prefix):], true
}

// minProgress is what a reader must receive after a failure before its failures count from
// zero again: a connection that fails every few bytes (a registry trickling until the idle
// timeout aborts it) is not making progress.
const minProgress = 64 << 10

// resetFailures adds n bytes of progress and returns the failure count: zero once the
// progress since the last failure reaches minProgress.
func resetFailures(failures int, progress *int64, n int) int {
	*progress += int64(n)
	if *progress >= minProgress {
		return 0
	}
	return failures
}
