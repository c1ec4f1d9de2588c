//! Decoded 8-bit images of a source too large for the memory budget, in one file of the cache
//! folder (`images/<key>.u8`), read back image by image. The file is named by the source's path
//! and requested shape, and holds the digest of the source's manifest: a source whose files
//! changed gets it rebuilt, an unchanged one (even after `touch`) reuses it.
//!
//! Layout: a 128-byte header (magic, format version, channels, height, width, image count,
//! manifest sha256 in hex, CRC-32 of the table that follows), a table of each image's CRC-32,
//! then the images back to back, CHW, one byte per value. The cache checks its own bytes: when
//! opened, every image is read and compared with its checksum, and a file of another length, a
//! damaged table or an image that differs gets the file rebuilt (with a notice saying why);
//! every later read is checked again ([`Pixels`]). A file is written under a temporary name and
//! renamed into place, so a reader never sees half a file.

use crate::manifest::hex;
use crate::pixels::Pixels;
use crate::{invalid, io_err, DataError, ImageShape, Preprocess, Result, Storage};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 16] = b"imprint-u8-image";
/// Raised whenever decoding or the layout changes what a file holds (2: checksums).
const VERSION: u32 = 2;
const HEADER: usize = 128;
/// Images decoded at once while a cache file is written, at most: enough to keep every core
/// busy; fewer when the memory budget says so.
const CHUNK: usize = 4096;
/// Bytes read at once while a cache file is checked.
const CHECK_READ: usize = 4 << 20;

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

fn header(shape: ImageShape, count: usize, digest: &str, table_sum: u32) -> [u8; HEADER] {
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
    h[104..108].copy_from_slice(&table_sum.to_le_bytes());
    h
}

/// The shape and table checksum a header of this format, count and digest gives, if it is one.
fn read_header(h: &[u8], count: usize, digest: &str) -> Option<(ImageShape, u32)> {
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
    let same = stored == count as u64 && h[40..104] == header(shape, count, digest, 0)[40..104];
    (same && !shape.is_empty()).then_some((shape, u32_at(104)))
}

/// Where the images start in a file of `count` of them.
fn data_start(count: usize) -> Option<usize> {
    count.checked_mul(4)?.checked_add(HEADER)
}

/// What a cache file of a source holds.
pub(crate) enum Cached {
    /// Images of this content, every one checked.
    Usable(ImageShape, Pixels),
    /// No file, or one of another content or shape (the source changed): to be built.
    Absent,
    /// A file of this content whose bytes are not what was written: to be rebuilt, saying why.
    Damaged(String),
}

fn read_at(file: &File, out: &mut [u8], at: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, out, at)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = file;
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(out)
    }
}

/// The cached images of a source whose manifest digest is `digest` and which holds `count`
/// images, every image checked against its checksum. A file that exists but cannot be opened
/// is an error naming it.
pub(crate) fn open(file: &Path, count: usize, digest: &str) -> Result<Cached> {
    let handle = match imprint_fs::open_regular(file) {
        Ok(f) => f,
        // none there (or no folder to hold one: building it says why)
        Err(e)
            if matches!(
                e.source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(Cached::Absent)
        }
        Err(e) => return Err(e.into()),
    };
    let len = handle.metadata().map_err(io_err(file))?.len();
    let mut h = [0u8; HEADER];
    if len < HEADER as u64 || read_at(&handle, &mut h, 0).is_err() {
        return Ok(Cached::Absent);
    }
    let Some((shape, table_sum)) = read_header(&h, count, digest) else {
        return Ok(Cached::Absent);
    };
    let image_len = shape.len();
    let (Some(start), Some(whole)) = (
        data_start(count),
        count
            .checked_mul(image_len)
            .and_then(|n| n.checked_add(data_start(count)?)),
    ) else {
        return Ok(Cached::Absent);
    };
    if len != whole as u64 {
        return Ok(Cached::Damaged(format!(
            "{len} bytes where {whole} were written"
        )));
    }
    let mut table = vec![0u8; start - HEADER];
    read_at(&handle, &mut table, HEADER as u64).map_err(io_err(file))?;
    if crc32fast::hash(&table) != table_sum {
        return Ok(Cached::Damaged("its table of checksums changed".into()));
    }
    let sums: Vec<u32> = table
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    if let Some(bad) = first_mismatch(&handle, start, image_len, &sums).map_err(io_err(file))? {
        return Ok(Cached::Damaged(format!(
            "image {bad} no longer matches its checksum"
        )));
    }
    let pixels = Pixels::on_disk(handle, file, start, (count, image_len), Some(sums));
    Ok(Cached::Usable(shape, pixels))
}

/// The first image (in order) whose bytes do not match its checksum, reading the file in
/// parallel runs of about [`CHECK_READ`] bytes.
fn first_mismatch(
    file: &File,
    start: usize,
    image_len: usize,
    sums: &[u32],
) -> std::io::Result<Option<usize>> {
    let per_read = (CHECK_READ / image_len.max(1)).max(1);
    let runs: Vec<usize> = (0..sums.len()).step_by(per_read).collect();
    let found = runs
        .par_iter()
        .map(|&first| -> std::io::Result<Option<usize>> {
            let n = per_read.min(sums.len() - first);
            let mut buffer = vec![0u8; n * image_len];
            read_at(file, &mut buffer, (start + first * image_len) as u64)?;
            Ok(buffer
                .chunks_exact(image_len)
                .zip(&sums[first..first + n])
                .position(|(image, &sum)| crc32fast::hash(image) != sum)
                .map(|k| first + k))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(found.into_iter().flatten().next())
}

/// Fills a new cache file at `file` with `count` images of `shape`, image `i` written by
/// `fill(i, bytes)`, and returns them read from it. The images are decoded a chunk at a time,
/// in parallel, and written in order; a chunk holds at most `budget` bytes (but one image per
/// worker thread), so that the build streams within the memory budget however many images
/// there are.
pub(crate) fn build(
    file: &Path,
    shape: ImageShape,
    count: usize,
    digest: &str,
    budget: usize,
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
    let start = data_start(count).ok_or_else(|| invalid(file, "too many images"))?;
    // The header and table are written last, once the checksums are known.
    temp.write_all(&vec![0u8; start]).map_err(disk_full)?;
    let len = shape.len();
    let chunk = (budget / len.max(1))
        .max(rayon::current_num_threads())
        .min(CHUNK)
        .min(count.max(1));
    let mut buffer = vec![0u8; chunk * len];
    let mut sums = Vec::with_capacity(count);
    for first in (0..count).step_by(chunk) {
        let n = chunk.min(count - first);
        buffer[..n * len]
            .par_chunks_mut(len)
            .enumerate()
            .try_for_each(|(k, out)| fill(first + k, out))?;
        sums.extend(buffer[..n * len].chunks_exact(len).map(crc32fast::hash));
        temp.write_all(&buffer[..n * len]).map_err(disk_full)?;
    }
    drop(buffer);
    let table: Vec<u8> = sums.iter().flat_map(|s| s.to_le_bytes()).collect();
    let head = header(shape, count, digest, crc32fast::hash(&table));
    write_at(temp.as_file(), &[head.as_slice(), &table].concat(), 0).map_err(disk_full)?;
    temp.as_file().sync_all().map_err(disk_full)?;
    temp.persist(file).map_err(|e| DataError::Io {
        path: file.display().to_string(),
        source: e.error,
    })?;
    let handle = imprint_fs::open_regular(file)?;
    Ok(Pixels::on_disk(
        handle,
        file,
        start,
        (count, len),
        Some(sums),
    ))
}

fn write_at(file: &File, bytes: &[u8], at: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, bytes, at)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Seek, SeekFrom};
        let mut f = file;
        f.seek(SeekFrom::Start(at))?;
        f.write_all(bytes)
    }
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

    fn usable(found: Cached) -> (ImageShape, Pixels) {
        match found {
            Cached::Usable(shape, pixels) => (shape, pixels),
            Cached::Absent => panic!("absent"),
            Cached::Damaged(why) => panic!("damaged: {why}"),
        }
    }

    fn damage(found: Cached) -> String {
        match found {
            Cached::Damaged(why) => why,
            Cached::Absent => "absent".into(),
            Cached::Usable(..) => panic!("usable"),
        }
    }

    #[test]
    fn a_built_cache_reads_back_and_only_for_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("images/x.u8");
        let built = build(&file, SHAPE, 5000, "ab", 1 << 20, fill).unwrap();
        assert!(built.is_on_disk());
        assert_eq!(built.len(), 5000);
        let mut last = [0u8; 6];
        fill(4999, &mut last).unwrap();
        assert_eq!(&*built.bytes(4999), &last);
        let (shape, again) = usable(open(&file, 5000, "ab").unwrap());
        assert_eq!(shape, SHAPE);
        assert_eq!(again.bytes(17), built.bytes(17));
        assert_eq!(
            damage(open(&file, 5000, "cd").unwrap()),
            "absent",
            "other digest"
        );
        assert_eq!(
            damage(open(&file, 4999, "ab").unwrap()),
            "absent",
            "other count"
        );
        let none = dir.path().join("none.u8");
        assert_eq!(damage(open(&none, 1, "ab").unwrap()), "absent");
        // no temporary file left behind
        assert_eq!(
            std::fs::read_dir(file.parent().unwrap()).unwrap().count(),
            1
        );
    }

    /// A budget smaller than the images writes them a few at a time, with the same bytes.
    #[test]
    fn a_small_budget_streams_the_build_in_small_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.u8"), dir.path().join("b.u8"));
        build(&a, SHAPE, 300, "ab", 0, fill).unwrap();
        build(&b, SHAPE, 300, "ab", 1 << 30, fill).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    }

    #[test]
    fn damaged_caches_say_why_and_others_are_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.u8");
        build(&file, SHAPE, 10, "ab", 1 << 20, fill).unwrap();
        let whole = std::fs::read(&file).unwrap();
        let start = HEADER + 40;
        let flipped = |at: usize| {
            let mut b = whole.clone();
            b[at] ^= 0x10;
            b
        };
        for (bad, why) in [
            (
                whole[..whole.len() - 1].to_vec(),
                "227 bytes where 228 were written",
            ),
            (
                [whole.as_slice(), &[0]].concat(),
                "229 bytes where 228 were written",
            ),
            (
                flipped(start + 6 * 4 + 1),
                "image 4 no longer matches its checksum",
            ),
            (flipped(HEADER + 9), "its table of checksums changed"),
            (whole[..10].to_vec(), "absent"),
            (
                [b"imprint-u8-imagX".as_slice(), &whole[16..]].concat(),
                "absent",
            ),
            (Vec::new(), "absent"),
        ] {
            std::fs::write(&file, &bad).unwrap();
            assert_eq!(damage(open(&file, 10, "ab").unwrap()), why, "{}", bad.len());
        }
        // a cache path that cannot be opened as a file is an error naming it
        let folder = dir.path().join("folder.u8");
        std::fs::create_dir(&folder).unwrap();
        let err = open(&folder, 10, "ab").map(|_| ()).unwrap_err().to_string();
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
