//! The kernel ELF (`vmlinux`) inside a bzImage (`vmlinuz`). Qemu boots it directly through its
//! PVH entry point, which skips the kernel's own decompressor: under TCG that xz or zstd unpack
//! takes about 7 s of every guest run.
//!
//! The x86 boot protocol (2.08+) gives the compressed payload's place in its setup header:
//! it starts `payload_offset` bytes into the protected-mode code, which follows the
//! `setup_sects + 1` 512-byte sectors of the real-mode part. For xz and zstd the kernel build
//! appends the decompressed size as 4 little-endian bytes, which is checked here.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use apifence_tests::cmd::{check, output_with_timeout};

/// Bound on one decompression (60 MB of output).
const DECOMPRESS_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Offsets in the setup header (Documentation/arch/x86/boot.rst).
const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: usize = 0x202;
const PROTOCOL_VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
/// First boot protocol that records the payload's place.
const MIN_PROTOCOL: u16 = 0x0208;

/// How a payload is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Xz,
    Zstd,
    Gzip,
}

impl Compression {
    fn detect(payload: &[u8]) -> Option<Compression> {
        if payload.starts_with(b"\xfd7zXZ\x00") {
            Some(Compression::Xz)
        } else if payload.starts_with(b"\x28\xb5\x2f\xfd") {
            Some(Compression::Zstd)
        } else if payload.starts_with(b"\x1f\x8b") {
            Some(Compression::Gzip)
        } else {
            None
        }
    }

    /// The tool that decompresses it to stdout with `-dc FILE`.
    fn tool(self) -> &'static str {
        match self {
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        }
    }

    /// Whether the build appended the decompressed size (gzip carries its own).
    fn size_appended(self) -> bool {
        !matches!(self, Compression::Gzip)
    }
}

/// Writes the ELF kernel inside the bzImage `vmlinuz` to `out`.
pub fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    let image = std::fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let payload = payload(&image).with_context(|| {
        format!(
            "{} is not a bzImage (boot protocol 2.08+)",
            vmlinuz.display()
        )
    })?;
    let compression = Compression::detect(payload).with_context(|| {
        format!(
            "{}: payload compressed in an unknown format (starts {:02x?})",
            vmlinuz.display(),
            &payload[..payload.len().min(6)]
        )
    })?;
    let (stream, expected_size) = if compression.size_appended() {
        let (stream, size) = payload
            .split_last_chunk::<4>()
            .context("payload shorter than its size field")?;
        (stream, Some(u32::from_le_bytes(*size) as usize))
    } else {
        (payload, None)
    };
    let compressed = out.with_extension("payload");
    std::fs::write(&compressed, stream)
        .with_context(|| format!("writing {}", compressed.display()))?;
    let tool = compression.tool();
    let result = output_with_timeout(
        Command::new(tool).arg("-dc").arg(&compressed),
        DECOMPRESS_TIMEOUT,
    );
    let _ = std::fs::remove_file(&compressed);
    let decompressed = result?;
    check(
        &format!("{tool} -dc (payload of {})", vmlinuz.display()),
        &decompressed,
    )?;
    let elf = decompressed.stdout;
    if !elf.starts_with(b"\x7fELF") {
        bail!("{}: the payload is not an ELF kernel", vmlinuz.display());
    }
    if let Some(size) = expected_size
        && elf.len() != size
    {
        bail!(
            "{}: payload decompressed to {} bytes, the image says {size}",
            vmlinuz.display(),
            elf.len()
        );
    }
    std::fs::write(out, elf).with_context(|| format!("writing {}", out.display()))
}

/// The compressed payload of a bzImage, if its setup header says where it is.
fn payload(image: &[u8]) -> Option<&[u8]> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(*image.get(at..)?.first_chunk::<2>()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(*image.get(at..)?.first_chunk::<4>()?));
    if image.get(HEADER_MAGIC..HEADER_MAGIC + 4)? != b"HdrS"
        || u16_at(PROTOCOL_VERSION)? < MIN_PROTOCOL
    {
        return None;
    }
    // A zero means the historical default of four sectors.
    let setup_sects = match *image.get(SETUP_SECTS)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + usize::try_from(u32_at(PAYLOAD_OFFSET)?).ok()?;
    let length = usize::try_from(u32_at(PAYLOAD_LENGTH)?).ok()?;
    image.get(start..start.checked_add(length)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage-shaped buffer: header fields set, `payload` at its recorded place.
    fn image(setup_sects: u8, version: u16, payload_offset: u32, payload: &[u8]) -> Vec<u8> {
        let sects = if setup_sects == 0 {
            4
        } else {
            usize::from(setup_sects)
        };
        let start = (sects + 1) * 512 + payload_offset as usize;
        let mut image = vec![0u8; start + payload.len() + 16];
        image[SETUP_SECTS] = setup_sects;
        image[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        image[PROTOCOL_VERSION..PROTOCOL_VERSION + 2].copy_from_slice(&version.to_le_bytes());
        image[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&payload_offset.to_le_bytes());
        let length = u32::try_from(payload.len()).unwrap();
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&length.to_le_bytes());
        image[start..start + payload.len()].copy_from_slice(payload);
        image
    }

    #[test]
    fn payload_found_where_the_header_says() {
        let data = b"\xfd7zXZ\x00rest-of-stream\x10\x00\x00\x00";
        let img = image(27, 0x020f, 0x3a1, data);
        assert_eq!(payload(&img), Some(&data[..]));
        let default_sects = image(0, 0x0208, 0x10, data);
        assert_eq!(payload(&default_sects), Some(&data[..]));
    }

    #[test]
    fn not_a_bzimage() {
        let data = b"\x28\xb5\x2f\xfdzstd";
        let old = image(27, 0x0207, 0x10, data);
        assert_eq!(
            payload(&old),
            None,
            "protocol before 2.08 has no payload fields"
        );
        let mut no_magic = image(27, 0x020f, 0x10, data);
        no_magic[HEADER_MAGIC] = b'X';
        assert_eq!(payload(&no_magic), None);
        let mut past_end = image(27, 0x020f, 0x10, data);
        past_end[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(payload(&past_end), None);
        assert_eq!(payload(&[0u8; 16]), None);
    }

    #[test]
    fn compression_from_magic() {
        assert_eq!(
            Compression::detect(b"\xfd7zXZ\x00..."),
            Some(Compression::Xz)
        );
        assert_eq!(
            Compression::detect(b"\x28\xb5\x2f\xfd.."),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::detect(b"\x1f\x8b\x08"),
            Some(Compression::Gzip)
        );
        assert_eq!(Compression::detect(b"\x02\x21\x4c\x18"), None);
        assert!(!Compression::Gzip.size_appended());
        assert!(Compression::Zstd.size_appended());
    }
}
