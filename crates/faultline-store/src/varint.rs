//! LEB128 varints (unsigned, 7 bits a byte, low bits first, high bit set on every byte but
//! the last), as the store's index files and ClickHouse's native format write lengths and
//! counts. One encoder and one decoder for every file that uses them.

/// Appends `v` as a LEB128 varint (1 to 10 bytes).
pub fn put(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads one varint from the front of `buf` and advances past it. Refuses, naming the
/// fault, input that ends inside the varint or a value wider than 64 bits.
pub fn take(buf: &mut &[u8]) -> Result<u64, &'static str> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or("the input ends inside a varint")?;
        *buf = rest;
        if shift == 63 && b > 1 {
            return Err("a varint wider than 64 bits");
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("a varint wider than 64 bits")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_input() {
        let values = [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX];
        let mut out = Vec::new();
        for v in values {
            put(v, &mut out);
        }
        assert_eq!(out[..4], [0, 1, 127, 0x80]);
        let mut buf = out.as_slice();
        for v in values {
            assert_eq!(take(&mut buf).unwrap(), v);
        }
        assert!(buf.is_empty());
        assert!(take(&mut [0x80u8].as_slice()).is_err(), "ends inside");
        assert!(take(&mut [0xffu8; 10].as_slice()).is_err(), "never ends");
        let mut wide = [0xffu8; 10];
        wide[9] = 0x02;
        assert!(take(&mut wide.as_slice()).is_err(), "65 bits");
    }
}
