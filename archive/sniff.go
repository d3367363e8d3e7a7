// Package archive recognises and reads image archives: docker-archive (podman save, docker save:
// a top-level manifest.json listing configs and layer tars) and oci-archive (a tar of an OCI image
// layout: oci-layout, index.json, blobs/).
package archive

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/kura-oci/kura/errdefs"
)

// Kind is the kind of image archive a tar is.
type Kind int

const (
	// None is a tar that is no image archive (a root file system, say).
	None Kind = iota
	// Docker is a docker-archive.
	Docker
	// OCI is an oci-archive.
	OCI
)

func (k Kind) String() string {
	switch k {
	case Docker:
		return "docker-archive"
	case OCI:
		return "oci-archive"
	}
	return "plain tar"
}

// maxMeta bounds the metadata files read while sniffing (manifest.json, oci-layout).
const maxMeta = 4 << 20

// Sniffer follows the entries of a tar one by one and says when they make an image archive.
type Sniffer struct {
	layout, index bool
}

// Entry looks at one entry (payload: its content) and returns the archive kind known so far.
func (s *Sniffer) Entry(hdr *tar.Header, payload io.Reader) Kind {
	name := strings.TrimSuffix(path.Clean("/"+hdr.Name), "/")
	if hdr.Typeflag != tar.TypeReg || strings.Count(name, "/") != 1 || hdr.Size > maxMeta {
		return s.kind()
	}
	switch name {
	case "/manifest.json":
		if isDockerManifest(payload) {
			return Docker
		}
	case "/index.json":
		s.index = true
	case "/oci-layout":
		var l struct {
			Version string `json:"imageLayoutVersion"`
		}
		s.layout = json.NewDecoder(io.LimitReader(payload, maxMeta)).Decode(&l) == nil && l.Version != ""
	}
	return s.kind()
}

func (s *Sniffer) kind() Kind {
	if s.layout && s.index {
		return OCI
	}
	return None
}

// isDockerManifest says whether r holds a docker-archive manifest.json: a non-empty list of
// images, each with a Config path.
func isDockerManifest(r io.Reader) bool {
	var m []struct {
		Config string
		Layers []string
	}
	if json.NewDecoder(io.LimitReader(r, maxMeta)).Decode(&m) != nil || len(m) == 0 {
		return false
	}
	for _, e := range m {
		if e.Config == "" {
			return false
		}
	}
	return true
}

// RefusedError is the error of a Guard that met an image archive.
func RefusedError(k Kind) error {
	return fmt.Errorf("the tar is an image archive (%s), not a root file system tar; load it with kura load -i FILE: %w", k, errdefs.ErrInvalid)
}

// Guard passes a plain (uncompressed) tar stream through, and fails the read as soon as the
// entries seen make it an image archive, so that importing an archive as a root file system
// stops before anything is recorded. A side goroutine reads a copy of the stream; Close ends it.
type Guard struct {
	r    io.Reader
	pw   *io.PipeWriter
	done chan struct{}
	err  error
}

// NewGuard starts watching the tar read through r.
func NewGuard(r io.Reader) *Guard {
	pr, pw := io.Pipe()
	g := &Guard{r: r, pw: pw, done: make(chan struct{})}
	go g.watch(pr)
	return g
}

func (g *Guard) watch(pr *io.PipeReader) {
	defer close(g.done)
	var s Sniffer
	tr := tar.NewReader(pr)
	for {
		hdr, err := tr.Next()
		if err != nil {
			break // not a tar, or its end: the importer judges the stream itself
		}
		if k := s.Entry(hdr, tr); k != None {
			g.err = RefusedError(k)
			pr.CloseWithError(g.err)
			return
		}
	}
	io.Copy(io.Discard, pr)
}

// Read reads from the stream and fails once it is known to be an image archive.
func (g *Guard) Read(p []byte) (int, error) {
	n, err := g.r.Read(p)
	if n > 0 {
		if _, werr := g.pw.Write(p[:n]); werr != nil {
			return 0, werr
		}
	}
	return n, err
}

// Close ends the watch; it returns the refusal if the stream was an image archive.
func (g *Guard) Close() error {
	g.pw.Close()
	<-g.done
	if g.err != nil && !errors.Is(g.err, io.ErrClosedPipe) {
		return g.err
	}
	return nil
}
