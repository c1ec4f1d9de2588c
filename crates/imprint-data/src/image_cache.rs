//! Decoded 8-bit images of a source too large for the memory budget, in one file of the cache
//! folder (`images/<key>.u8`), read back through a file mapping. The file is named by the
//! source's path and requested shape, and holds the digest of the source's manifest: a source
//! whose files changed gets it rebuilt, an unchanged one (even after `touch`) reuses it.
//!
//! Layout: a 128-byte header (magic, format version, channels, height, width, image count,
//! manifest sha256 in hex), then the images back to back, CHW, one byte per value. A file that
//! is short, long or of another header is rebuilt; it is written under a temporary name and
//! renamed into place, so a reader never sees half a file.

use crate::manifest::hex;
use crate::pixels::Pixels;
use crate::{invalid, io_err, DataError, ImageShape, Preprocess, Result, Storage};
use memmap2::Mmap;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 16] = b"imprint-u8-image";
/// Raised whenever decoding changes what a source's bytes become.
const VERSION: u32 = 1;
const HEADER: usize = 128;
/// Images decoded at once while a cache file is written: enough to keep every core busy,
/// few enough to bound the memory it takes (and never more than the budget holds).
const CHUNK: usize = 4096;

/// The cache file of `source` decoded as `prep` asks, when there is a cache folder.
pub(crate) fn cache_file(storage: &Storage, source: &Path, prep: &Preprocess) -> Option<PathBuf> {
    let dir = storage.cache_dir.as_ref()?;
    let canonical = source
        .canonicalize()
        .unwrap_or_else(|_| source.to_path_buf());
    let key = format!(
        "{}|{:?}|{:?}|{:?}",
        canonical.display(),
        prep.channels,
        prep.height,
        prep.width
    );
    let name = hex(&Sha256::digest(key.as_bytes()));
    Some(dir.join("images").join(format!("{}.u8", &name[..32])))
}

fn header(shape: ImageShape, count: usize, digest: &str) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..16].copy_from_slice(MAGIC);
    h[16..20].copy_from_slice(&VERSION.to_le_bytes());
    for (k, d) in [shape.channels, shape.height, shape.width]
        .iter()
        .enumerate()
    {
        h[20 + 4 * k..24 + 4 * k].copy_from_slice(&(*d as u32).to_le_bytes());
    }
    h[32..40].copy_from_slice(&(count as u64).to_le_bytes());
    let digest = digest.as_bytes();
    h[40..40 + digest.len().min(64)].copy_from_slice(&digest[..digest.len().min(64)]);
    h
}

/// The shape a header of this format, count and digest gives, if it is one.
fn read_header(h: &[u8], count: usize, digest: &str) -> Option<ImageShape> {
    let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
    if h.len() < HEADER || &h[..16] != MAGIC || u32_at(16) != VERSION {
        return None;
    }
    let shape = ImageShape {
        channels: u32_at(20) as usize,
        height: u32_at(24) as usize,
        width: u32_at(28) as usize,
    };
    let stored = u64::from_le_bytes(h[32..40].try_into().expect("8 bytes"));
    let same = stored == count as u64 && h[40..104] == header(shape, count, digest)[40..104];
    (same && !shape.is_empty()).then_some(shape)
}

/// The cached images of a source whose manifest digest is `digest` and which holds `count`
/// images, with their shape; `None` when there is no such cache file or it is not of this
/// content (then it is rebuilt). A file that exists but cannot be read is an error naming it.
pub(crate) fn open(
    file: &Path,
    count: usize,
    digest: &str,
    resident_limit: usize,
) -> Result<Option<(ImageShape, Pixels)>> {
    let handle = match std::fs::File::open(file) {
        Ok(f) => f,
        // none there (or no folder to hold one: building it says why)
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(io_err(file)(e)),
    };
    // SAFETY: cache files are only ever replaced by renaming a new file over them, never
    // written in place, so the mapped contents stay as they were when mapped.
    let map = unsafe { Mmap::map(&handle) }.map_err(io_err(file))?;
    let Some(shape) = read_header(&map[..HEADER.min(map.len())], count, digest) else {
        return Ok(None);
    };
    let whole = count
        .checked_mul(shape.len())
        .and_then(|n| n.checked_add(HEADER));
    if whole != Some(map.len()) {
        return Ok(None);
    }
    let pixels = Pixels::mapped(map, HEADER, count, shape.len(), resident_limit);
    Ok(Some((shape, pixels)))
}

/// Fills a new cache file at `file` with `count` images of `shape`, image `i` written by
/// `fill(i, bytes)`, and maps it. The images are decoded a chunk at a time, in parallel, and
/// written in order.
pub(crate) fn build(
    file: &Path,
    shape: ImageShape,
    count: usize,
    digest: &str,
    resident_limit: usize,
    fill: impl Fn(usize, &mut [u8]) -> Result<()> + Sync,
) -> Result<Pixels> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let unwritable = |e: std::io::Error| {
        let needed_mb = (count as u64 * shape.len() as u64) >> 20;
        invalid(
            dir,
            format!(
                "cannot write the image cache ({e}); set data.cache_dir (or IMPRINT_CACHE_DIR) \
                 to a writable folder, or data.memory_budget_mb to at least {} to hold these \
                 images in memory",
                needed_mb + 1
            ),
        )
    };
    std::fs::create_dir_all(dir).map_err(unwritable)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".building-")
        .tempfile_in(dir)
        .map_err(unwritable)?;
    let disk_full = |e: std::io::Error| io_err(file)(e);
    temp.write_all(&header(shape, count, digest))
        .map_err(disk_full)?;
    let len = shape.len();
    let chunk = CHUNK.min(resident_limit / len.max(1)).max(1);
    let mut buffer = vec![0u8; chunk.min(count) * len];
    for start in (0..count).step_by(chunk) {
        let n = chunk.min(count - start);
        buffer[..n * len]
            .par_chunks_mut(len)
            .enumerate()
            .try_for_each(|(k, out)| fill(start + k, out))?;
        temp.write_all(&buffer[..n * len]).map_err(disk_full)?;
    }
    temp.as_file().sync_all().map_err(disk_full)?;
    temp.persist(file).map_err(|e| DataError::Io {
        path: file.display().to_string(),
        source: e.error,
    })?;
    open(file, count, digest, resident_limit)?
        .map(|(_, pixels)| pixels)
        .ok_or_else(|| invalid(file, "the image cache just written does not read back"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: ImageShape = ImageShape {
        channels: 1,
        height: 2,
        width: 3,
    };

    fn fill(i: usize, out: &mut [u8]) -> Result<()> {
        out.iter_mut()
            .enumerate()
            .for_each(|(k, b)| *b = (i * 7 + k) as u8);
        Ok(())
    }

    #[test]
    fn a_built_cache_reads_back_and_only_for_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("images/x.u8");
        let built = build(&file, SHAPE, 5000, "ab", 1 << 20, fill).unwrap();
        assert!(built.is_mapped());
        assert_eq!(built.len(), 5000);
        let mut last = [0u8; 6];
        fill(4999, &mut last).unwrap();
        assert_eq!(built.bytes(4999), &last);
        let (shape, again) = open(&file, 5000, "ab", 1 << 20).unwrap().unwrap();
        assert_eq!(shape, SHAPE);
        assert_eq!(again.bytes(17), built.bytes(17));
        assert!(
            open(&file, 5000, "cd", 1 << 20).unwrap().is_none(),
            "other digest"
        );
        assert!(
            open(&file, 4999, "ab", 1 << 20).unwrap().is_none(),
            "other count"
        );
        assert!(open(&dir.path().join("none.u8"), 1, "ab", 0)
            .unwrap()
            .is_none());
        // no temporary file left behind
        assert_eq!(
            std::fs::read_dir(file.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn truncated_or_corrupt_caches_are_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.u8");
        build(&file, SHAPE, 10, "ab", 1 << 20, fill).unwrap();
        let whole = std::fs::read(&file).unwrap();
        for bad in [
            whole[..whole.len() - 1].to_vec(),
            whole[..10].to_vec(),
            [whole.as_slice(), &[0]].concat(),
            [b"imprint-u8-imagX".as_slice(), &whole[16..]].concat(),
            Vec::new(),
        ] {
            std::fs::write(&file, &bad).unwrap();
            assert!(
                open(&file, 10, "ab", 1 << 20).unwrap().is_none(),
                "{}",
                bad.len()
            );
        }
        // a cache path that cannot be opened as a file is an error naming it
        let folder = dir.path().join("folder.u8");
        std::fs::create_dir(&folder).unwrap();
        let err = open(&folder, 10, "ab", 0)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&folder.display().to_string()), "{err}");
    }

    #[test]
    fn an_unwritable_cache_folder_is_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"").unwrap();
        let err = build(&blocked.join("images/x.u8"), SHAPE, 10, "ab", 0, fill)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot write the image cache"), "{err}");
        assert!(err.contains("data.memory_budget_mb to at least 1"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
