//! On-disk layout of WAL segments and records, and the scanner that checks them.
//!
//! A WAL directory holds segment files named by the sequence number of their first record,
//! zero-padded to 20 digits: `00000000000000000001.wal`. Records in a segment have
//! consecutive sequence numbers; the next segment starts where the previous one ended,
//! except across a quarantined segment, which leaves a gap.
//!
//! ```text
//! segment header (32 bytes, little endian)
//!   0   8  magic        b"FLTWALSG"
//!   8   2  version      1
//!  10   2  reserved     0
//!  12   8  first_seq    sequence number of the first record in this segment
//!  20   8  created_ms   wall-clock creation time, Unix milliseconds (informational)
//!  28   4  header_crc   CRC32C of bytes 0..28
//!
//! record (28-byte header + payload, little endian), repeated to the end of the file
//!   0   2  magic        0xF17A
//!   2   1  version      1
//!   3   1  flags        0 (reserved)
//!   4   4  length       payload length in bytes, at most MAX_PAYLOAD
//!   8   8  seq          sequence number, previous record's + 1
//!  16   8  time_ns      wall-clock append time, Unix nanoseconds
//!  24   4  crc          CRC32C of bytes 0..24 followed by the payload
//!  28   n  payload      opaque bytes (the WAL knows nothing about what they hold)
//! ```
//!
//! Recovery rules (see [`scan_segment`]): records are read from the front; the first record
//! whose magic, version, length, sequence number or checksum is wrong ends the valid part.
//! In the last (active) segment the rest is a torn tail from a crash and is truncated; in a
//! sealed segment it is corruption and the segment is quarantined.

/// Segment file magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FLTWALSG";
/// Segment format version written by this build.
pub const SEGMENT_VERSION: u16 = 1;
/// Length of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Record magic.
pub const RECORD_MAGIC: u16 = 0xF17A;
/// Record format version written by this build.
pub const RECORD_VERSION: u8 = 1;
/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 28;
/// Largest payload a record may carry; anything larger is treated as corruption.
pub const MAX_PAYLOAD: usize = 256 << 20;
/// File name suffix of segments.
pub const SEGMENT_SUFFIX: &str = ".wal";

/// The file name of the segment whose first record is `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// Parses a segment file name; `None` for anything else in the directory.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes a segment header.
pub fn encode_segment_header(first_seq: u64, created_ms: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_seq.to_le_bytes());
    h[20..28].copy_from_slice(&created_ms.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the first record.
    pub first_seq: u64,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
}

/// Why a segment header was refused.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, String> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(format!(
            "segment header is {} bytes, expected {SEGMENT_HEADER_LEN}",
            bytes.len()
        ));
    }
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err("segment header has a bad magic number".to_string());
    }
    let crc = u32::from_le_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]);
    if crc32c::crc32c(&bytes[0..28]) != crc {
        return Err("segment header checksum mismatch".to_string());
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != SEGMENT_VERSION {
        return Err(format!(
            "segment format version {version} is not supported (this build reads {SEGMENT_VERSION})"
        ));
    }
    Ok(SegmentHeader {
        first_seq: read_u64(&bytes[12..20]),
        created_ms: read_u64(&bytes[20..28]),
    })
}

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Appends one framed record to `out`.
pub fn encode_record(out: &mut Vec<u8>, seq: u64, time_ns: u64, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.push(RECORD_VERSION);
    out.push(0);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&time_ns.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 24]), payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The framed size of a record with `payload_len` bytes of payload.
pub fn framed_len(payload_len: usize) -> u64 {
    (RECORD_HEADER_LEN + payload_len) as u64
}

/// One record found in a segment, borrowing its payload from the segment bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Sequence number.
    pub seq: u64,
    /// Append time, Unix nanoseconds.
    pub time_ns: u64,
    /// Byte offset of the record header in the segment file.
    pub offset: u64,
    /// The payload.
    pub payload: &'a [u8],
}

/// What scanning one segment found.
#[derive(Debug)]
pub struct SegmentScan<'a> {
    /// The header, if it was valid.
    pub header: Option<SegmentHeader>,
    /// The valid records, in order.
    pub records: Vec<RecordRef<'a>>,
    /// Length of the valid prefix of the file (header plus valid records).
    pub valid_len: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub problem: Option<String>,
}

/// Checks a whole segment file and returns its valid records.
///
/// Never panics on any input: a bad header, length, sequence number or checksum ends the
/// valid part and is described in `problem`.
pub fn scan_segment(bytes: &[u8]) -> SegmentScan<'_> {
    let header = match decode_segment_header(bytes) {
        Ok(h) => h,
        Err(problem) => {
            return SegmentScan {
                header: None,
                records: Vec::new(),
                valid_len: 0,
                problem: Some(problem),
            };
        }
    };
    let mut records = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    let mut expected_seq = header.first_seq;
    let mut problem = None;
    while pos < bytes.len() {
        match decode_record_at(bytes, pos, expected_seq) {
            Ok(rec) => {
                pos += RECORD_HEADER_LEN + rec.payload.len();
                expected_seq += 1;
                records.push(rec);
            }
            Err(p) => {
                problem = Some(format!("at byte {pos}: {p}"));
                break;
            }
        }
    }
    SegmentScan {
        header: Some(header),
        records,
        valid_len: pos as u64,
        problem,
    }
}

/// The framed length (header and payload) of the record whose header starts `bytes`, when
/// the header's magic, version and length are valid: how much to read to have it all.
pub fn record_framed_len(bytes: &[u8]) -> Option<u64> {
    payload_len(bytes).ok().map(framed_len)
}

/// The payload length the record header at the start of `rest` gives, after checking its
/// magic, version and length; the error says what is wrong.
fn payload_len(rest: &[u8]) -> Result<usize, String> {
    if rest.len() < RECORD_HEADER_LEN {
        return Err(format!(
            "torn record header ({} of {RECORD_HEADER_LEN} bytes)",
            rest.len()
        ));
    }
    let magic = u16::from_le_bytes([rest[0], rest[1]]);
    if magic != RECORD_MAGIC {
        return Err(format!("bad record magic {magic:#06x}"));
    }
    if rest[2] != RECORD_VERSION {
        return Err(format!("unsupported record version {}", rest[2]));
    }
    let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(format!(
            "record length {len} exceeds the maximum {MAX_PAYLOAD}"
        ));
    }
    Ok(len)
}

/// Decodes the record at byte `pos` of a segment, which must carry `expected_seq`.
pub fn decode_record_at(
    bytes: &[u8],
    pos: usize,
    expected_seq: u64,
) -> Result<RecordRef<'_>, String> {
    let rest = &bytes[pos..];
    let len = payload_len(rest)?;
    if rest.len() < RECORD_HEADER_LEN + len {
        return Err(format!(
            "torn record payload ({} of {len} bytes)",
            rest.len() - RECORD_HEADER_LEN
        ));
    }
    let seq = read_u64(&rest[8..16]);
    let time_ns = read_u64(&rest[16..24]);
    let crc = u32::from_le_bytes([rest[24], rest[25], rest[26], rest[27]]);
    let payload = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
    let actual = crc32c::crc32c_append(crc32c::crc32c(&rest[0..24]), payload);
    if actual != crc {
        return Err(format!("record checksum mismatch (seq field {seq})"));
    }
    if seq != expected_seq {
        return Err(format!("record sequence {seq}, expected {expected_seq}"));
    }
    Ok(RecordRef {
        seq,
        time_ns,
        offset: pos as u64,
        payload,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn segment(first: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = encode_segment_header(first, 7).to_vec();
        for (i, p) in payloads.iter().enumerate() {
            encode_record(&mut out, first + i as u64, 100 + i as u64, p);
        }
        out
    }

    #[test]
    fn names_round_trip_and_reject_strangers() {
        assert_eq!(segment_file_name(42), "00000000000000000042.wal");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.wal"),
            Some(42)
        );
        for bad in [
            "42.wal",
            "0000000000000000004x.wal",
            "00000000000000000042.tmp",
            "notes.txt",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn clean_segment_scans_fully() {
        let bytes = segment(5, &[b"a", b"", b"hello"]);
        let scan = scan_segment(&bytes);
        assert_eq!(scan.problem, None);
        assert_eq!(scan.valid_len, bytes.len() as u64);
        let seqs: Vec<u64> = scan.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![5, 6, 7]);
        assert_eq!(scan.records[2].payload, b"hello");
        assert_eq!(scan.records[1].time_ns, 101);
    }

    #[test]
    fn every_truncation_point_keeps_a_valid_prefix() {
        let bytes = segment(1, &[b"first", b"second", b"third"]);
        let full = scan_segment(&bytes);
        let ends: Vec<u64> = full
            .records
            .iter()
            .map(|r| r.offset + framed_len(r.payload.len()))
            .collect();
        for cut in 0..bytes.len() {
            let scan = scan_segment(&bytes[..cut]);
            let expect = ends.iter().filter(|&&e| e as usize <= cut).count();
            if cut < SEGMENT_HEADER_LEN {
                assert!(scan.header.is_none());
            } else {
                assert_eq!(scan.records.len(), expect, "cut at {cut}");
            }
        }
    }

    #[test]
    fn any_single_bit_flip_is_detected() {
        let bytes = segment(1, &[b"payload one", b"payload two"]);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let scan = scan_segment(&b);
                // Either the header is refused or at least one record is lost, never a
                // silently changed record.
                let intact = scan.header.is_some()
                    && scan.records.len() == 2
                    && scan.records[0].payload == b"payload one"
                    && scan.records[1].payload == b"payload two";
                assert!(!intact, "flip at byte {i} bit {bit} went unnoticed");
                assert!(
                    scan.problem.is_some(),
                    "flip at byte {i} bit {bit}: no problem"
                );
            }
        }
    }

    #[test]
    fn sequence_gap_inside_a_segment_is_corruption() {
        let mut bytes = encode_segment_header(1, 0).to_vec();
        encode_record(&mut bytes, 1, 0, b"a");
        encode_record(&mut bytes, 3, 0, b"b");
        let scan = scan_segment(&bytes);
        assert_eq!(scan.records.len(), 1);
        assert!(scan.problem.unwrap().contains("expected 2"));
    }
}
