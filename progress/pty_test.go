package progress

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal pair (posix_openpt, unlockpt, ptsname) of the given width.
func openPTY(t *testing.T, cols uint16) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Close() })
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slave.Close() })
	if err := unix.IoctlSetWinsize(int(slave.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: cols}); err != nil {
		t.Fatal(err)
	}
	return master, slave
}

// drive runs a bar to its end on r and returns what the pseudo-terminal's master read.
func drive(t *testing.T, master, slave *os.File, r Reporter) string {
	t.Helper()
	var got bytes.Buffer
	read := make(chan struct{})
	go func() { io.Copy(&got, master); close(read) }()
	b := r.Bar("layer")
	b.SetTotal(3 << 20)
	b.Add(1 << 20)
	b.Skip(2 << 20)
	b.Done("")
	Finish(r)
	slave.Close() // the master reads EIO once the slave is closed and drained
	<-read
	return got.String()
}

// TestAutoOnAPseudoTerminal: on a sized terminal Auto draws mpb's bars (a bar graph, bytes and
// rate, a total); on an unsized one, where bars would draw nothing, it prints plain lines.
func TestAutoOnAPseudoTerminal(t *testing.T) {
	master, slave := openPTY(t, 120)
	out := drive(t, master, slave, Auto(slave))
	for _, want := range []string{"layer", "total", "[====", "3.0MiB / 3.0MiB", "iB/s done"} {
		if !strings.Contains(out, want) {
			t.Errorf("sized terminal: output lacks %q:\n%q", want, out)
		}
	}
	if strings.Contains(out, "started") {
		t.Errorf("sized terminal got plain lines:\n%q", out)
	}

	master, slave = openPTY(t, 0)
	out = drive(t, master, slave, Auto(slave))
	if !strings.Contains(out, "layer: started") || !strings.Contains(out, "layer: done 3.0MiB / 3.0MiB") {
		t.Errorf("unsized terminal: want plain lines, got:\n%q", out)
	}
}
