package pull

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
)

// killableRegistry is a TCP front of the test registry that can be killed (listener closed,
// every connection cut: new ones are refused) and started again on the same port, as a
// registry process that dies and comes back. The token realm stays up: only the registry dies.
type killableRegistry struct {
	t        *testing.T
	addr     string
	upstream string

	mu    sync.Mutex
	ln    net.Listener
	conns []net.Conn
	armed chan struct{} // closed when a client sends bytes after arm
}

func newKillableRegistry(t *testing.T, upstream string) *killableRegistry {
	k := &killableRegistry{t: t, addr: "127.0.0.1:0", upstream: upstream}
	k.start()
	t.Cleanup(k.kill)
	return k
}

func (k *killableRegistry) start() {
	ln, err := net.Listen("tcp", k.addr)
	if err != nil {
		k.t.Fatal(err)
	}
	k.mu.Lock()
	k.ln, k.addr = ln, ln.Addr().String()
	k.mu.Unlock()
	go k.accept(ln)
}

// arm returns a channel closed as soon as a client sends a request byte: the fill's GET.
func (k *killableRegistry) arm() <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.armed = make(chan struct{})
	return k.armed
}

func (k *killableRegistry) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", k.upstream)
		if err != nil {
			c.Close()
			continue
		}
		k.mu.Lock()
		k.conns = append(k.conns, c, up)
		k.mu.Unlock()
		go io.Copy(c, up)
		go io.Copy(up, readNotifier{c, k})
	}
}

// readNotifier closes the armed channel on the first bytes a client sends after arm.
type readNotifier struct {
	r io.Reader
	k *killableRegistry
}

func (n readNotifier) Read(b []byte) (int, error) {
	m, err := n.r.Read(b)
	if m > 0 {
		n.k.mu.Lock()
		if n.k.armed != nil {
			close(n.k.armed)
			n.k.armed = nil
		}
		n.k.mu.Unlock()
	}
	return m, err
}

func (k *killableRegistry) kill() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ln != nil {
		k.ln.Close()
		k.ln = nil
	}
	for _, c := range k.conns {
		c.Close()
	}
	k.conns = nil
}

func (k *killableRegistry) source(t *testing.T) *registry.Source {
	r, err := imageref.Parse("docker://" + k.addr + "/app:v0")
	if err != nil {
		t.Fatal(err)
	}
	return registry.NewSource(registryClient(registry.WithTLSVerify(false)), r)
}

// serveFrom is serve with the service fetching from src.
func (e *lazyEnv) serveFrom(t *testing.T, ctx context.Context, src *registry.Source, p *lazy.Pending, opts ...Option) chan error {
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- ServeLazy(ctx, e.s, src, p, func() { close(ready) }, opts...) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("ServeLazy ended before it was ready: %v", err)
	}
	return done
}

type readResult struct {
	b   []byte
	err error
}

// startRead reads name through the mount in a goroutine.
func (e *lazyEnv) startRead(name string) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		b, err := os.ReadFile(filepath.Join(e.target, name))
		ch <- readResult{b, err}
	}()
	return ch
}

// waitRead fails the test if the read has not returned after limit (the drill's bound on how
// long a reader can be kept waiting) or returned bytes that are not a prefix of the content.
func (e *lazyEnv) waitRead(t *testing.T, ch <-chan readResult, name string, limit time.Duration) ([]byte, error) {
	t.Helper()
	select {
	case r := <-ch:
		if !bytes.HasPrefix(e.files[name], r.b) {
			t.Fatalf("%s: read %d bytes that are not the file's content", name, len(r.b))
		}
		return r.b, r.err
	case <-time.After(limit):
		t.Fatalf("%s: the read still hangs after %v", name, limit)
		return nil, nil
	}
}

func (e *lazyEnv) readWithin(t *testing.T, name string, limit time.Duration) ([]byte, error) {
	t.Helper()
	return e.waitRead(t, e.startRead(name), name, limit)
}

// TestLazyDrillRegistryKilledMidFill: the registry dies while a reader waits on a fill (its GET
// is in flight, stalled); the reader gets EIO within the fill timeout, never zeros, and so does
// a read while the registry refuses connections; fsck stays clean. With the registry back on
// the same address, a restarted service resumes the pending pull and completes the layer with
// the right DiffID.
func TestLazyDrillRegistryKilledMidFill(t *testing.T) {
	e, p := newLazyEnv(t)
	k := newKillableRegistry(t, e.reg.Host)
	const fillTimeout = 10 * time.Second
	ctx, stopService := context.WithCancel(context.Background())
	defer stopService()
	done := e.serveFrom(t, ctx, k.source(t), p, WithBackgroundHeld(make(chan struct{})), WithFillTimeout(fillTimeout))

	e.reg.Proxy.SetFault(registrytest.Fault{Kind: registrytest.Stall})
	sent := k.arm()
	read := e.startRead("usr/lib/big.so")
	<-sent // the fill's GET reached the registry, which holds the answer back
	k.kill()
	if _, err := e.waitRead(t, read, "usr/lib/big.so", 3*fillTimeout); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read with the registry killed mid-fill: %v, want EIO", err)
	}
	if _, err := e.readWithin(t, "usr/lib/blob.bin", 3*fillTimeout); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read with the registry refusing connections: %v, want EIO", err)
	}
	checkFsck(t, e.s)

	stopService()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("stopped service: %v", err)
	}
	e.reg.Proxy.SetFault(registrytest.Fault{})
	k.start()
	p2, err := PullLazy(context.Background(), e.s, k.source(t))
	if err != nil || p2.Dir != p.Dir {
		t.Fatalf("resume: %v, %v", p2, err)
	}
	hold := make(chan struct{})
	done = e.serveFrom(t, context.Background(), k.source(t), p2, WithBackgroundHeld(hold))
	for _, name := range []string{"usr/lib/big.so", "usr/lib/blob.bin"} {
		if b, err := e.readWithin(t, name, 3*fillTimeout); err != nil || len(b) != len(e.files[name]) {
			t.Fatalf("%s after the registry is back: %d bytes, %v", name, len(b), err)
		}
	}
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkComplete(t, p)
}

// mmapRead maps name read-only through the mount and copies it out byte by byte from the
// mapping. A fault on the mapping (SIGBUS past the end of the backing file) comes back as
// fault=true with the bytes read before it, instead of killing the test binary.
func (e *lazyEnv) mmapRead(t *testing.T, name string) (got []byte, fault bool) {
	t.Helper()
	f, err := os.Open(filepath.Join(e.target, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := syscall.Mmap(int(f.Fd()), 0, len(e.files[name]), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap %s: %v", name, err)
	}
	defer syscall.Munmap(m)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			fault = true
		}
	}()
	got = make([]byte, 0, len(m))
	for i := range m {
		got = append(got, m[i])
	}
	return got, false
}

// TestLazyDrillMmap: a placeholder whose first access is a mapping (no read before it, as
// ld.so maps ld.so.cache and glibc its locale files) maps with its content: the fill service
// filled it when the mount opened it. With the filler gone, touching a placeholder's mapping
// raises SIGBUS before the first byte (the placeholder is empty behind the mount), never zeros.
// After a restart another file, mapped first, maps with its content and the layer completes.
func TestLazyDrillMmap(t *testing.T) {
	e, p := newLazyEnv(t)
	ctx, stopService := context.WithCancel(context.Background())
	defer stopService()
	done := e.serve(t, ctx, p, WithBackgroundHeld(make(chan struct{})))
	e.mmapFirst(t, "usr/lib/big.so")
	stopService()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("stopped service: %v", err)
	}
	got, fault := e.mmapRead(t, "usr/lib/blob.bin")
	if !fault || len(got) != 0 {
		t.Fatalf("mmap of a placeholder with no filler: %d bytes, fault %v; want SIGBUS on the first byte", len(got), fault)
	}
	checkFsck(t, e.s)

	p2, err := PullLazy(context.Background(), e.s, e.source(t))
	if err != nil || p2.Dir != p.Dir {
		t.Fatalf("resume: %v, %v", p2, err)
	}
	hold := make(chan struct{})
	done = e.serve(t, context.Background(), p2, WithBackgroundHeld(hold))
	e.mmapFirst(t, "usr/lib/blob.bin")
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkComplete(t, p)
}

// mmapFirst maps name through the mount with no read before: the whole content.
func (e *lazyEnv) mmapFirst(t *testing.T, name string) {
	t.Helper()
	if got, fault := e.mmapRead(t, name); fault || !bytes.Equal(got, e.files[name]) {
		t.Fatalf("first access of %s by mmap: %d of %d bytes, fault %v", name, len(got), len(e.files[name]), fault)
	}
}
