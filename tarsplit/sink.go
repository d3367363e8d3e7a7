package tarsplit

import (
	"bytes"

	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/tarstream"
)

// sink takes a predicted tar-split line by line.
type sink interface {
	// reuse writes the segment in front of a known entry as the known layer has it.
	reuse(r *record)
	// segment writes a segment; b is not retained.
	segment(b []byte)
	// file writes a file entry; crc is its content's CRC (nil for none) and may be retained.
	file(name string, size int64, crc []byte) error
}

// jsonSink writes a predicted tar-split as its JSON stream.
type jsonSink struct{ p *tarstream.Packer }

// reuse writes a known entry's segment, copying its base64 text where the index kept it.
func (s jsonSink) reuse(r *record) {
	if r.seg64 != nil {
		s.p.Segment64(r.seg64)
	} else {
		s.p.Segment(r.seg)
	}
}

func (s jsonSink) segment(b []byte) { s.p.Segment(b) }

func (s jsonSink) file(name string, size int64, crc []byte) error { return s.p.File(name, size, crc) }

// entrySink collects a predicted tar-split as decoded entries.
type entrySink struct {
	entries []storage.Entry
	seen    tarstream.PathSet
}

func (s *entrySink) reuse(r *record) { s.add(storage.Entry{Type: storage.SegmentType, Payload: r.seg}) }

func (s *entrySink) segment(b []byte) {
	s.add(storage.Entry{Type: storage.SegmentType, Payload: bytes.Clone(b)})
}

func (s *entrySink) file(name string, size int64, crc []byte) error {
	if err := s.seen.Add(name); err != nil {
		return err
	}
	e := storage.Entry{Type: storage.FileType, Size: size, Payload: crc}
	e.SetName(name)
	s.add(e)
	return nil
}

func (s *entrySink) add(e storage.Entry) {
	e.Position = len(s.entries)
	s.entries = append(s.entries, e)
}
