//! The sha256 of every file a source is made of, remembered by (path, size, modification time)
//! in the cache folder, so that an unchanged source is not read and hashed again at every run.
//!
//! The cache is an aid, never a record: a missing, unreadable or corrupt cache file only means
//! hashing again, and a cache folder that cannot be written only means hashing again next time.

use crate::manifest::{hex, relative, ManifestEntry};
use crate::{io_err, Result, Storage};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// What says a file is unchanged: its size and modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    bytes: u64,
    /// Nanoseconds since 1970; `None` where the file system gives no usable time, and then the
    /// file is hashed every time.
    mtime_ns: Option<u128>,
}

fn stamp(path: &Path) -> Result<Stamp> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos());
    Ok(Stamp {
        bytes: meta.len(),
        mtime_ns,
    })
}

/// The remembered digests of the files under one folder.
struct HashCache {
    file: Option<PathBuf>,
    known: HashMap<String, (u64, u128, String)>,
}

impl HashCache {
    /// The cache of the files under `root` (by its canonical path), empty when there is none
    /// or it cannot be read.
    fn open(storage: &Storage, root: &Path) -> HashCache {
        let file = storage.cache_dir.as_ref().map(|dir| {
            let canonical = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
            let key = hex(&Sha256::digest(canonical.to_string_lossy().as_bytes()));
            dir.join("hashes").join(format!("{}.csv.gz", &key[..32]))
        });
        let known = file.as_deref().and_then(read_table).unwrap_or_default();
        HashCache { file, known }
    }

    fn lookup(&self, path: &str, stamp: Stamp) -> Option<&str> {
        let mtime = stamp.mtime_ns?;
        match self.known.get(path) {
            Some((bytes, t, sha)) if *bytes == stamp.bytes && *t == mtime => Some(sha),
            _ => None,
        }
    }

    /// Remembers `entries` beside what was known (other sources under the same folder keep
    /// theirs) and writes the cache; best effort.
    fn save(mut self, entries: &[(ManifestEntry, Stamp)]) {
        let Some(file) = self.file.take() else {
            return;
        };
        let mut changed = false;
        for (e, s) in entries {
            let Some(mtime) = s.mtime_ns else { continue };
            let value = (e.bytes, mtime, e.sha256.clone());
            if self.known.get(&e.path) != Some(&value) {
                self.known.insert(e.path.clone(), value);
                changed = true;
            }
        }
        if changed {
            let _ = write_table(&file, &self.known);
        }
    }
}

fn read_table(file: &Path) -> Option<HashMap<String, (u64, u128, String)>> {
    let raw = std::fs::read(file).ok()?;
    let mut text = Vec::new();
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut text)
        .ok()?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_slice());
    let mut known = HashMap::new();
    for row in reader.records() {
        let row = row.ok()?;
        let (Some(path), Some(bytes), Some(mtime), Some(sha)) =
            (row.get(0), row.get(1), row.get(2), row.get(3))
        else {
            return None;
        };
        if sha.len() != 64 {
            return None;
        }
        known.insert(
            path.to_string(),
            (bytes.parse().ok()?, mtime.parse().ok()?, sha.to_string()),
        );
    }
    Some(known)
}

fn write_table(file: &Path, known: &HashMap<String, (u64, u128, String)>) -> Option<()> {
    std::fs::create_dir_all(file.parent()?).ok()?;
    let mut rows: Vec<_> = known.iter().collect();
    rows.sort();
    let mut csv = csv::Writer::from_writer(Vec::new());
    for (path, (bytes, mtime, sha)) in rows {
        csv.write_record([path, &bytes.to_string(), &mtime.to_string(), sha])
            .ok()?;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&csv.into_inner().ok()?).ok()?;
    imprint_fs::write_atomic(file, &gz.finish().ok()?).ok()
}

/// The manifest entries (path relative to `root`, size, sha256) of `files`, in their order:
/// from the cache where a file's size and time are as remembered, by reading it otherwise.
pub(crate) fn digest_files(
    root: &Path,
    files: &[PathBuf],
    storage: &Storage,
) -> Result<Vec<ManifestEntry>> {
    let cache = HashCache::open(storage, root);
    let found: Vec<(ManifestEntry, Stamp)> = files
        .par_iter()
        .map(|file| {
            let path = relative(root, file);
            let stamp = stamp(file)?;
            let sha256 = match cache.lookup(&path, stamp) {
                Some(sha) => sha.to_string(),
                None => imprint_fs::size_and_sha256(file)?.1,
            };
            let entry = ManifestEntry {
                path,
                bytes: stamp.bytes,
                sha256,
            };
            Ok((entry, stamp))
        })
        .collect::<Result<_>>()?;
    cache.save(&found);
    Ok(found.into_iter().map(|(e, _)| e).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(dir: &Path) -> Storage {
        Storage {
            cache_dir: Some(dir.to_path_buf()),
            ..Storage::default()
        }
    }

    #[test]
    fn hashes_are_remembered_until_size_or_time_change() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, cache) = (tmp.path().join("data"), tmp.path().join("cache"));
        std::fs::create_dir_all(root.join("a")).unwrap();
        let file = root.join("a/x.bin");
        std::fs::write(&file, b"abc").unwrap();
        let first = digest_files(&root, std::slice::from_ref(&file), &storage(&cache)).unwrap();
        assert_eq!(first[0].path, "a/x.bin");
        assert_eq!(
            first[0].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Remembered: a cache entry doctored to another digest is what comes back, proving the
        // file was not read again.
        let table = std::fs::read_dir(cache.join("hashes"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut known = read_table(&table).unwrap();
        known.get_mut("a/x.bin").unwrap().2 = "f".repeat(64);
        write_table(&table, &known).unwrap();
        let again = digest_files(&root, std::slice::from_ref(&file), &storage(&cache)).unwrap();
        assert_eq!(again[0].sha256, "f".repeat(64));
        // A new size (and time) is hashed afresh.
        std::fs::write(&file, b"abcd").unwrap();
        let changed = digest_files(&root, std::slice::from_ref(&file), &storage(&cache)).unwrap();
        assert_eq!(changed[0].bytes, 4);
        assert_eq!(
            changed[0].sha256,
            imprint_fs::size_and_sha256(&file).unwrap().1
        );
        // A corrupt cache file is ignored and replaced.
        std::fs::write(&table, b"garbage").unwrap();
        let fresh = digest_files(&root, std::slice::from_ref(&file), &storage(&cache)).unwrap();
        assert_eq!(fresh, changed);
        assert!(read_table(&table).is_some());
    }

    #[test]
    fn without_a_cache_folder_or_with_an_unwritable_one_files_are_hashed() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("x");
        std::fs::write(&file, b"abc").unwrap();
        let none = digest_files(tmp.path(), std::slice::from_ref(&file), &Storage::default());
        // a cache "folder" that is a file cannot be written: hashing still works
        let blocked = tmp.path().join("blocked");
        std::fs::write(&blocked, b"").unwrap();
        let blocked = digest_files(tmp.path(), &[file], &storage(&blocked));
        assert_eq!(none.unwrap(), blocked.unwrap());
    }
}
