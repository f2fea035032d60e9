//! A pinned `BPF_F_MMAPABLE` array map mapped into this process (Linux 5.5+): its elements
//! read and written with plain loads and stores instead of one syscall per element. Used for
//! the compiled table ([`super::table_maps`]) and the rule hit counters ([`super::maps`]).

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::MapData;

/// A pinned map could not be opened or mapped.
#[derive(Debug, thiserror::Error)]
#[error("mapping the pinned map {path} into memory: {source}")]
pub struct MappedError {
    /// Pin path.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

/// One array map mapped into this process, as a slice of `T` (the map's element type, whose
/// size is a multiple of 8, the kernel's element stride).
pub struct Mapped<T> {
    ptr: NonNull<T>,
    len: usize,
    bytes: usize,
}

impl<T: Copy> Mapped<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maps the array map pinned at `path`.
    pub fn open(path: &Path) -> Result<Self, MappedError> {
        let fail = |source: io::Error| MappedError {
            path: path.to_path_buf(),
            source,
        };
        let map = MapData::from_pin(path).map_err(|e| fail(io::Error::other(e)))?;
        let info = map.info().map_err(|e| fail(io::Error::other(e)))?;
        let value_size = info.value_size() as usize;
        if value_size != size_of::<T>() || !value_size.is_multiple_of(8) {
            return Err(fail(io::Error::other(format!(
                "its values are {value_size} bytes, expected {}",
                size_of::<T>()
            ))));
        }
        let len = info.max_entries() as usize;
        // SAFETY: plain libc call; the kernel checks fd, size and flags.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len * value_size).div_ceil(page) * page;
        // SAFETY: maps `bytes` of the array's value area (what mmap of a BPF_F_MMAPABLE array
        // exposes); the mapping stays valid after the fd is closed, until `munmap` in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(fail(io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<T>()).ok_or_else(|| fail(io::Error::other("null")))?;
        Ok(Self { ptr, len, bytes })
    }

    /// The map's elements.
    pub fn slice(&self) -> &[T] {
        // SAFETY: `len` elements of `T` are mapped; `T` is plain data valid for any bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The map's elements, for writing.
    pub fn slice_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `slice`; `&mut self` keeps this process's other views away.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `open` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

impl Mapped<u64> {
    /// Element `index` read atomically (the program adds to it concurrently); `None` past the
    /// end.
    pub fn load(&self, index: usize) -> Option<u64> {
        (index < self.len).then(|| {
            // SAFETY: in bounds, 8-byte aligned (page-aligned mapping, 8-byte elements); the
            // kernel's writers use atomic adds.
            unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(index)) }.load(Ordering::Relaxed)
        })
    }

    /// Stores `value` into element `index` atomically (ignored past the end).
    pub fn store(&self, index: usize, value: u64) {
        if index < self.len {
            // SAFETY: as in `load`.
            unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(index)) }
                .store(value, Ordering::Relaxed);
        }
    }
}
