// Package tarsplit predicts a zstd:chunked layer's tar-split from its TOC and the tar-splits of
// layers already stored, so that a partial pull of an update need not fetch it.
//
// A tar-split is, per tar entry, a segment (the previous entry's padding, then the entry's raw
// extension headers and header) and a file line (name, size, CRC-64 of the content), then the
// end of the archive. Predict builds it entry by entry from the TOC:
//
//   - an entry whose name and tar metadata equal a known entry's reuses that entry's header
//     bytes (when the padding before it is the same too, its base64 text is copied as it is);
//   - a changed or new entry gets a header written as the known layer's tar writer wrote its
//     model entry (the same name, else the same type and owner): by Go's archive/tar in whichever
//     format choice reproduces the model byte for byte, else by rewriting the model's fields in
//     place (GNU tar's gnu and posix formats); it must read back as the TOC entry;
//   - CRCs come from known entries with the same content digest, else from a CRCFunc;
//   - the end repeats the known layer's, filled to a 10 KiB record if the known one was.
//
// What the TOC does not record (user and group names, PAX records other than xattrs, which tar
// writer and options made the layer) is taken from the known layers, so a prediction can be
// wrong; it is never trusted unverified: Predict compares the compressed result with the TOC's
// tarSplitDigest, and a tar rebuilt from PredictJSON's output is checked against the DiffID.
//
// PredictEntries makes the same prediction as decoded entries, for a puller that rebuilds the
// tar from them: it writes no JSON, and the reused headers stay where the known tar-split's
// JSON held them (decoded in place). tarstream.WriteTarSplit writes entries as the tar-split
// stream; reading and writing tar-split lines is package tarstream's.
package tarsplit
