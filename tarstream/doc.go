// Package tarstream owns uncompressed tar streams and their tar-split: walking a tar while
// recording its tar-split (Walk, WalkRaw), the tar-split JSON codec (DecodeTarSplit and its
// line decoder, with their hostile-input limits), rebuilding the bit-exact tar from a tar-split
// and the files' contents (Rebuild), and telling and undoing a layer stream's compression
// (Sniff, Decompress). The zstd:chunked format built on these (TOC, footer, frames) is package
// chunked's.
package tarstream
