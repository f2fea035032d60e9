//! Reading operator-supplied files and streams (the config file, a list file or stdin) with a
//! size bound, so a huge or endless input fails with a clear error instead of exhausting
//! memory (parsing TOML costs tens of times the file's size).

use std::io::{self, Read};

/// Largest config file accepted. A config lists its ranges inline; tens of thousands fit.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Largest list file (or stdin list) accepted: what fits in one socket request line with
/// room to spare (see `protocol::MAX_LINE`).
pub const MAX_LIST_BYTES: u64 = 32 << 20;

/// Reads all of `reader` as UTF-8 text, failing with [`io::ErrorKind::FileTooLarge`] when it
/// holds more than `limit` bytes (reading stops one byte past the limit).
pub fn read_text(reader: impl Read, limit: u64) -> io::Result<String> {
    let mut bytes = Vec::new();
    reader.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!(
                "it is larger than {} MiB, the limit for this input",
                limit >> 20
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// [`read_text`] of the file at `path`.
pub fn read_file(path: &std::path::Path, limit: u64) -> io::Result<String> {
    read_text(std::fs::File::open(path)?, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_past_the_limit() {
        assert_eq!(read_text(&b"abc"[..], 3).unwrap(), "abc");
        let error = read_text(io::repeat(b'x'), 1 << 20).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::FileTooLarge);
        assert!(error.to_string().contains("larger than 1 MiB"), "{error}");
        let error = read_text(&[0xff_u8][..], 8).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
