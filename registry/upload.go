package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
)

// UploadBlob uploads desc.Size bytes of blob in chunks (POST, PATCH with Content-Range, PUT
// ?digest=) without asking first whether the repository has it (StatBlob and MountBlob do
// that). Unlike PushBlob it survives dropped connections: after a failed PATCH it asks the
// registry how much of the upload it holds (GET on the upload URL, Range header) and continues
// when the failed chunk arrived whole (only its answer was lost); otherwise (a chunk cut short,
// a lost session) it starts a new session from byte 0, because the registry may still be writing
// the cut chunk.
// progress, if not nil, is told how many more bytes the registry has accepted (never counting a
// byte twice). The registry verifies the digest on the final PUT.
func (c *Client) UploadBlob(ctx context.Context, repo imageref.Repository, desc ocispec.Descriptor, blob io.ReaderAt, progress func(n int64)) error {
	if err := checkDescriptor(desc); err != nil {
		return fmt.Errorf("uploading a blob to %s: %w", repo, err)
	}
	rc, err := c.repo(ctx, repo, true)
	if err != nil {
		return err
	}
	u := &upload{c: c, rc: rc, repo: repo, desc: desc, blob: blob, progress: progress}
	err = u.run(ctx)
	if errors.Is(err, errdefs.ErrDigestMismatch) && ctx.Err() == nil {
		// A PATCH cut mid-body may still be writing on the registry when the status query or the
		// next PATCH arrives, and the two interleave: the registry then refuses the digest. Send
		// the whole blob once more in a new session.
		u.c.stats.retries.Add(1)
		err = u.run(ctx)
	}
	return err
}

type upload struct {
	c        *Client
	rc       *repoClient
	repo     imageref.Repository
	desc     ocispec.Descriptor
	blob     io.ReaderAt
	progress func(int64)
	reported int64 // high-water mark of bytes reported to progress
}

func (u *upload) run(ctx context.Context) error {
	loc, err := u.start(ctx)
	if err != nil {
		return err
	}
	var off int64
	failures := 0 // consecutive failures without progress
	for off < u.desc.Size {
		n := min(u.c.opts.chunkSize, u.desc.Size-off)
		next, sent, err := u.patch(ctx, loc, off, n)
		if err == nil {
			loc, off, failures = next, off+n, 0
			u.report(off)
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		failures++
		// At least three rounds even when the transport itself does not retry (WithRetry(1, …)):
		// a PATCH failing is what this loop exists for.
		if failures >= max(u.c.opts.retries, 3) {
			return fmt.Errorf("uploading %s to %s at byte %d: %w", u.desc.Digest, u.repo, off, err)
		}
		if err := sleep(ctx, backoff(&u.c.opts, failures-1)); err != nil {
			return err
		}
		u.c.stats.retries.Add(1)
		// Resume only when the registry holds the whole chunk (the answer was lost), or when not a
		// byte of it left: then no handler of that PATCH is writing. A chunk cut short may still be
		// being written, and a
		// PATCH sent meanwhile interleaves with it (distribution then stores a blob that is not
		// what the digest names), so anything else starts a new session.
		if next, have, serr := u.status(ctx, loc); serr == nil && (have == off+n || sent == 0 && have == off) {
			loc, off = next, have
			u.report(off)
			continue
		}
		// The session is lost, partial or refuses to say: begin again.
		if loc, err = u.start(ctx); err != nil {
			return err
		}
		off = 0
	}
	return u.finish(ctx, loc)
}

func (u *upload) report(off int64) {
	if u.progress != nil && off > u.reported {
		u.progress(off - u.reported)
		u.reported = off
	}
}

// start opens an upload session and returns its absolute URL.
func (u *upload) start(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.rc.url(u.repo, "blobs", "uploads/"), nil)
	if err != nil {
		return "", fmt.Errorf("starting upload of %s: %v: %w", u.desc.Digest, err, errdefs.ErrInvalid)
	}
	resp, err := u.rc.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("starting upload of %s to %s: %w", u.desc.Digest, u.repo, err)
	}
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("starting upload of %s to %s: %w", u.desc.Digest, u.repo, newHTTPError(resp))
	}
	resp.Body.Close()
	return location(resp)
}

// patch sends bytes [off, off+n) of the blob. sent counts the body bytes the transport read,
// so the caller knows whether any of the chunk can have reached the registry.
func (u *upload) patch(ctx context.Context, loc string, off, n int64) (next string, sent int64, err error) {
	body := &sentCounter{r: io.NewSectionReader(u.blob, off, n)}
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, loc, body)
	if err != nil {
		return "", 0, fmt.Errorf("upload URL %q: %v: %w", loc, err, errdefs.ErrInvalid)
	}
	// No GetBody: the retrying transport must not resend a chunk whose first copy the registry may
	// still be writing; run asks the registry what it holds instead.
	req.ContentLength = n
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Content-Range", strconv.FormatInt(off, 10)+"-"+strconv.FormatInt(off+n-1, 10))
	resp, err := u.rc.client.Do(req)
	if err != nil {
		return "", body.n.Load(), err
	}
	if resp.StatusCode != http.StatusAccepted {
		return "", body.n.Load(), newHTTPError(resp)
	}
	resp.Body.Close()
	next, err = location(resp)
	return next, body.n.Load(), err
}

// sentCounter counts what the transport read of a request body (possibly from another goroutine).
type sentCounter struct {
	r io.Reader
	n atomic.Int64
}

func (b *sentCounter) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// status asks how many bytes the session holds. The answer's Range is "0-END" (END inclusive);
// distribution says "0-0" for an empty upload, so that answer is taken as zero bytes (at most
// one byte is sent again, which the next PATCH's Content-Range check would catch).
func (u *upload) status(ctx context.Context, loc string) (string, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc, nil)
	if err != nil {
		return "", 0, fmt.Errorf("upload URL %q: %v: %w", loc, err, errdefs.ErrInvalid)
	}
	resp, err := u.rc.client.Do(req)
	if err != nil {
		return "", 0, err
	}
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK {
		return "", 0, newHTTPError(resp)
	}
	resp.Body.Close()
	have, err := parseUploadRange(resp.Header.Get("Range"))
	if err != nil {
		return "", 0, err
	}
	next := loc
	if resp.Header.Get("Location") != "" {
		if next, err = location(resp); err != nil {
			return "", 0, err
		}
	}
	return next, have, nil
}

// parseUploadRange returns the number of bytes an upload status Range header ("0-END" or
// "bytes=0-END") says the registry holds.
func parseUploadRange(v string) (int64, error) {
	if v == "" {
		return 0, fmt.Errorf("upload status without a Range header: %w", errdefs.ErrInvalid)
	}
	s := strings.TrimPrefix(v, "bytes=")
	first, last, ok := strings.Cut(s, "-")
	start, err1 := strconv.ParseInt(first, 10, 64)
	end, err2 := strconv.ParseInt(last, 10, 64)
	if !ok || err1 != nil || err2 != nil || start != 0 || end < 0 || end == math.MaxInt64 {
		return 0, fmt.Errorf("upload status Range %q: %w", v, errdefs.ErrInvalid)
	}
	if end == 0 {
		return 0, nil
	}
	return end + 1, nil
}

func (u *upload) finish(ctx context.Context, loc string) error {
	pu, err := url.Parse(loc)
	if err != nil {
		return fmt.Errorf("upload URL %q: %v: %w", loc, err, errdefs.ErrInvalid)
	}
	q := pu.Query()
	q.Set("digest", u.desc.Digest.String())
	pu.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, pu.String(), http.NoBody)
	if err != nil {
		return fmt.Errorf("finishing upload of %s: %v: %w", u.desc.Digest, err, errdefs.ErrInvalid)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := u.rc.client.Do(req)
	if err != nil {
		return fmt.Errorf("finishing upload of %s to %s: %w", u.desc.Digest, u.repo, err)
	}
	if resp.StatusCode != http.StatusCreated {
		herr := newHTTPError(resp)
		var he *HTTPError
		if errors.As(herr, &he) && he.StatusCode == http.StatusBadRequest && strings.Contains(he.Body, "DIGEST_INVALID") {
			return fmt.Errorf("finishing upload of %s to %s: %w: %w", u.desc.Digest, u.repo, herr, errdefs.ErrDigestMismatch)
		}
		return fmt.Errorf("finishing upload of %s to %s: %w", u.desc.Digest, u.repo, herr)
	}
	resp.Body.Close()
	return nil
}

// location resolves an upload answer's Location against the request URL.
func location(resp *http.Response) (string, error) {
	v := resp.Header.Get("Location")
	if v == "" {
		return "", fmt.Errorf("upload answer without a Location: %w", errdefs.ErrInvalid)
	}
	loc, err := resp.Request.URL.Parse(v)
	if err != nil {
		return "", fmt.Errorf("upload Location %q: %v: %w", v, err, errdefs.ErrInvalid)
	}
	return loc.String(), nil
}
