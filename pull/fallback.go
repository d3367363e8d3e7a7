package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/vbatts/tar-split/archive/tar"
	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layername"
	"github.com/kura-oci/kura/registry"
)

// The fallback rule (docs/design.md, "Falling back to a full pull"): a partial pull that
// cannot be done, or not exactly, fails with an error wrapping errdefs.ErrNeedFull, wherever
// the reason arises (here, in package registry, in package chunked). fallback alone decides.

// needFull is a reason not to pull a layer partially, in the fallback class.
func needFull(reason string) error { return fmt.Errorf("%s: %w", reason, errdefs.ErrNeedFull) }

// fallback decides whether a failed partial pull goes on as a full pull: exactly when err
// wraps errdefs.ErrNeedFull and no hostile class (errdefs.ErrInvalid, ErrDigestMismatch: a
// full pull would refuse the blob too, or the image contradicts itself), and ctx is live.
//
// When the registry already sent the whole blob (it ignored Range), body is that stream: the
// full pull reads it instead of asking again. If fallback says no, it closes the body.
func fallback(ctx context.Context, err error) (reason string, body io.ReadCloser, ok bool) {
	var whole *registry.WholeBlobError
	if errors.As(err, &whole) {
		body = whole.Body
	}
	ok = err != nil && ctx.Err() == nil && errors.Is(err, errdefs.ErrNeedFull) &&
		!errors.Is(err, errdefs.ErrInvalid) && !errors.Is(err, errdefs.ErrDigestMismatch)
	if !ok {
		if body != nil {
			body.Close()
		}
		return "", nil, false
	}
	return strings.TrimSuffix(err.Error(), ": "+errdefs.ErrNeedFull.Error()), body, true
}

// newerFormat turns a metadata format this build does not know (a TOC version, a manifest
// type: errdefs.ErrUnsupported, nothing malformed) into a reason to pull whole: the blob may
// well be valid, and a full pull needs none of its metadata.
func newerFormat(err error) error {
	if errors.Is(err, errdefs.ErrUnsupported) && !errors.Is(err, errdefs.ErrInvalid) && !errors.Is(err, errdefs.ErrNeedFull) {
		return needFull(fmt.Sprintf("its zstd:chunked metadata is in a format this build does not read (%v)", err))
	}
	return err
}

// namesFitTOC checks that every tar-split name is UTF-8. The TOC is JSON, which carries only
// UTF-8 (a writer replaces other bytes with U+FFFD), so a name that is not has no exact TOC
// entry: the comparison of TOC and tar-split would call the layer hostile, and files stored
// by TOC name would be renamed. The tar, stored whole by a full pull, keeps the name exactly.
func namesFitTOC(entries []storage.Entry) error {
	for i := range entries {
		if e := &entries[i]; e.Type == storage.FileType && (len(e.NameRaw) > 0 || !layername.InTOC(e.Name)) {
			return needFull(fmt.Sprintf("the name %q is not UTF-8, which the TOC cannot carry exactly", e.GetName()))
		}
	}
	return nil
}

// linksFitTOC is namesFitTOC for link targets, which only the tar headers in the tar-split's
// segments hold. Parsing them costs as much as the comparison itself, so it runs only once the
// comparison has failed, to tell a target the TOC cannot carry from a hostile disagreement.
func linksFitTOC(entries []storage.Entry) error {
	return asm.IterateHeaders(&entryList{entries: entries}, func(hdr *tar.Header) error {
		if !layername.InTOC(hdr.Linkname) {
			return needFull(fmt.Sprintf("the link target %q of %q is not UTF-8, which the TOC cannot carry exactly", hdr.Linkname, hdr.Name))
		}
		return nil
	})
}

// explainMismatch wraps a TOC/tar-split comparison: when it fails, a link target the TOC
// cannot carry is the reason (a full pull), else the failure stands.
func explainMismatch(entries []storage.Entry, compare func() error) func() error {
	return func() error {
		err := compare()
		if err == nil {
			return nil
		}
		if lerr := linksFitTOC(entries); errors.Is(lerr, errdefs.ErrNeedFull) {
			return lerr
		}
		return err
	}
}

// entryList is a storage.Unpacker over decoded entries.
type entryList struct {
	entries []storage.Entry
}

func (l *entryList) Next() (*storage.Entry, error) {
	if len(l.entries) == 0 {
		return nil, io.EOF
	}
	e := &l.entries[0]
	l.entries = l.entries[1:]
	return e, nil
}
