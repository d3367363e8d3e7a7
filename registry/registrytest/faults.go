package registrytest

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
)

// UploadFault is how FaultyUploads breaks one PATCH.
type UploadFault int

const (
	// CutBody sends part of the chunk, then breaks the connection: the registry may keep
	// what it received.
	CutBody UploadFault = iota
	// LostAnswer delivers the whole chunk, then reports a network error: the registry has the
	// bytes but the client does not know.
	LostAnswer
	// NotSent fails before anything reaches the registry.
	NotSent
)

// ErrInjected is the network error FaultyUploads reports (through the body for CutBody).
var ErrInjected = errors.New("injected upload fault")

// FaultyUploads is a client's base transport (registry.WithTransport) that breaks the PATCH
// requests whose 1-based sequence numbers are in At, the way Kind says, and counts every request
// by method: what a resumable upload must survive, and how many requests it spent.
type FaultyUploads struct {
	Inner http.RoundTripper
	Kind  UploadFault
	At    map[int]bool

	mu      sync.Mutex
	patches int
	faults  int
	methods map[string]int
}

// RoundTrip counts req and forwards it to Inner, unless it is a PATCH chosen by At.
func (f *FaultyUploads) RoundTrip(req *http.Request) (*http.Response, error) {
	f.mu.Lock()
	if f.methods == nil {
		f.methods = map[string]int{}
	}
	f.methods[req.Method]++
	fault := false
	if req.Method == http.MethodPatch {
		f.patches++
		fault = f.At[f.patches]
		if fault {
			f.faults++
		}
	}
	f.mu.Unlock()
	if !fault {
		return f.Inner.RoundTrip(req)
	}
	switch f.Kind {
	case CutBody:
		req = req.Clone(req.Context())
		req.Body = io.NopCloser(io.MultiReader(io.LimitReader(req.Body, req.ContentLength/2), errReader{}))
		resp, err := f.Inner.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
			return nil, fmt.Errorf("cut body was answered %s", resp.Status)
		}
		return nil, err
	case LostAnswer:
		resp, err := f.Inner.RoundTrip(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return nil, ErrInjected
	default:
		return nil, ErrInjected
	}
}

// Count returns how many requests with method went through so far, broken ones included.
func (f *FaultyUploads) Count(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.methods[method]
}

// Faults returns how many requests were broken so far.
func (f *FaultyUploads) Faults() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.faults
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, ErrInjected }
