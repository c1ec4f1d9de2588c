//! What a source is made of: its files (path, size, sha256), sorted by path, and one digest of
//! them all. Records carry the digest; the file list is written once per output folder
//! (`data-manifest.csv.gz`) and read back to name the first file that changed.

use crate::{invalid, io_err, Result, SourceFile};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// One file of a source, its path relative to the source's folder (`/`-separated).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ManifestEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A source's files and their digest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The source as it was named (a folder, a CSV list, an idx file).
    pub source: String,
    /// The folder entries' paths are relative to.
    root: PathBuf,
    /// Sorted by path.
    entries: Vec<ManifestEntry>,
    summary: SourceSummary,
}

/// A source in one record: how many files, how many bytes, and the sha256 of its sorted
/// manifest lines (`path,bytes,sha256`, one per file, as in `data-manifest.csv.gz`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSummary {
    pub path: String,
    pub files: usize,
    pub bytes: u64,
    pub sha256: String,
}

pub(crate) fn hex(digest: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(digest.len() * 2);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `path` relative to `root`, `/`-separated, as manifests name files.
pub(crate) fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

fn manifest_line(writer: &mut csv::Writer<Vec<u8>>, fields: &[&str]) {
    writer
        .write_record(fields)
        .expect("writing CSV into memory cannot fail");
}

impl Manifest {
    /// The manifest of `source`, whose files lie under `root`; `entries` in any order.
    pub fn new(source: &Path, root: &Path, mut entries: Vec<ManifestEntry>) -> Manifest {
        entries.sort();
        let mut lines = csv::Writer::from_writer(Vec::new());
        for e in &entries {
            manifest_line(&mut lines, &[&e.path, &e.bytes.to_string(), &e.sha256]);
        }
        let lines = lines.into_inner().expect("in-memory CSV");
        let summary = SourceSummary {
            path: source.display().to_string(),
            files: entries.len(),
            bytes: entries.iter().map(|e| e.bytes).sum(),
            sha256: hex(&Sha256::digest(&lines)),
        };
        Manifest {
            source: summary.path.clone(),
            root: root.to_path_buf(),
            entries,
            summary,
        }
    }

    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }

    pub fn summary(&self) -> &SourceSummary {
        &self.summary
    }

    /// The files as older records listed them: each path as read (the folder joined to the
    /// relative path).
    pub fn as_files(&self) -> Vec<SourceFile> {
        self.entries
            .iter()
            .map(|e| SourceFile {
                path: self.root.join(&e.path).display().to_string(),
                bytes: e.bytes,
                sha256: e.sha256.clone(),
            })
            .collect()
    }
}

/// A source as a record holds it: its summary, or (in records written before summaries) every
/// file one by one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SourceRecord {
    Summary(SourceSummary),
    Files(Vec<SourceFile>),
}

impl Default for SourceRecord {
    fn default() -> Self {
        SourceRecord::Files(Vec::new())
    }
}

impl SourceRecord {
    pub fn of(manifest: &Manifest) -> SourceRecord {
        SourceRecord::Summary(manifest.summary().clone())
    }

    /// Whether `manifest` holds the recorded content (the digest; for an older list, every
    /// file's path, size and sha256).
    pub fn matches(&self, manifest: &Manifest) -> bool {
        match self {
            SourceRecord::Summary(s) => s.sha256 == manifest.summary().sha256,
            SourceRecord::Files(files) => {
                let mut recorded = files.clone();
                recorded.sort_by(|a, b| a.path.cmp(&b.path));
                let mut now = manifest.as_files();
                now.sort_by(|a, b| a.path.cmp(&b.path));
                recorded == now
            }
        }
    }

    /// Files and bytes, for a one-line description.
    pub fn totals(&self) -> (usize, u64) {
        match self {
            SourceRecord::Summary(s) => (s.files, s.bytes),
            SourceRecord::Files(f) => (f.len(), f.iter().map(|f| f.bytes).sum()),
        }
    }
}

/// The first difference between two sorted file lists, in words: a file whose size or content
/// changed, one that is gone or one that is new; `None` when they agree.
pub fn first_change(recorded: &[ManifestEntry], now: &[ManifestEntry]) -> Option<String> {
    let (mut a, mut b) = (recorded.iter().peekable(), now.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return None,
            (Some(x), Some(y)) if x.path == y.path => {
                if x != y {
                    return Some(format!(
                        "{} changed ({} bytes, sha256 {} recorded; {} bytes, sha256 {} now)",
                        x.path, x.bytes, x.sha256, y.bytes, y.sha256
                    ));
                }
                a.next();
                b.next();
            }
            (Some(x), Some(y)) if x.path < y.path => {
                return Some(format!("{} was read then and is gone now", x.path))
            }
            (Some(x), None) => return Some(format!("{} was read then and is gone now", x.path)),
            (_, Some(y)) => return Some(format!("{} is new", y.path)),
        }
    }
}

pub const MANIFEST_FILE: &str = "data-manifest.csv.gz";
const MANIFEST_HEADER: [&str; 4] = ["source", "path", "bytes", "sha256"];

/// Writes the files of `manifests` (each source once) as `source,path,bytes,sha256` rows,
/// gzipped, crash-safely.
pub fn write_manifests(path: &Path, manifests: &[&Manifest]) -> Result<()> {
    let mut rows = csv::Writer::from_writer(Vec::new());
    manifest_line(&mut rows, &MANIFEST_HEADER);
    let mut seen = Vec::new();
    for m in manifests {
        let key = (&m.source, &m.summary.sha256);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        for e in &m.entries {
            manifest_line(
                &mut rows,
                &[&m.source, &e.path, &e.bytes.to_string(), &e.sha256],
            );
        }
    }
    let rows = rows.into_inner().expect("in-memory CSV");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&rows).map_err(io_err(path))?;
    let bytes = gz.finish().map_err(io_err(path))?;
    imprint_fs::write_atomic(path, &bytes)?;
    Ok(())
}

/// The files a `data-manifest.csv.gz` lists for `source`, sorted by path.
pub fn read_manifest(path: &Path, source: &str) -> Result<Vec<ManifestEntry>> {
    let raw = std::fs::read(path).map_err(io_err(path))?;
    let mut text = Vec::new();
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .read_to_end(&mut text)
        .map_err(|e| invalid(path, format!("corrupt gzip data: {e}")))?;
    let mut reader = csv::Reader::from_reader(text.as_slice());
    let mut entries = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| invalid(path, e.to_string().replace('\n', " ")))?;
        let (Some(src), Some(file), Some(bytes), Some(sha)) =
            (row.get(0), row.get(1), row.get(2), row.get(3))
        else {
            return Err(invalid(path, "a row without its four fields"));
        };
        if src != source {
            continue;
        }
        let bytes = bytes
            .parse()
            .map_err(|_| invalid(path, format!("bytes of {file} is not a number")))?;
        entries.push(ManifestEntry {
            path: file.to_string(),
            bytes,
            sha256: sha.to_string(),
        });
    }
    entries.sort();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, bytes: u64, sha: &str) -> ManifestEntry {
        ManifestEntry {
            path: path.into(),
            bytes,
            sha256: sha.into(),
        }
    }

    #[test]
    fn digest_does_not_depend_on_listing_order_and_sees_every_field() {
        let files = vec![entry("b/2.png", 5, "bb"), entry("a/1.png", 3, "aa")];
        let mut reversed = files.clone();
        reversed.reverse();
        let src = Path::new("data/x");
        let one = Manifest::new(src, src, files.clone());
        let two = Manifest::new(src, src, reversed);
        assert_eq!(one.summary(), two.summary());
        assert_eq!(one.summary().files, 2);
        assert_eq!(one.summary().bytes, 8);
        // the digest is of the sorted lines, reproducible with any sha256 tool
        let lines = "a/1.png,3,aa\nb/2.png,5,bb\n";
        assert_eq!(one.summary().sha256, hex(&Sha256::digest(lines)));
        for changed in [
            entry("a/1.png", 4, "aa"),
            entry("a/1.png", 3, "ab"),
            entry("a/3.png", 3, "aa"),
        ] {
            let other = Manifest::new(src, src, vec![changed, files[0].clone()]);
            assert_ne!(other.summary().sha256, one.summary().sha256);
        }
    }

    #[test]
    fn first_change_names_the_changed_gone_or_new_file() {
        let old = [entry("a", 1, "x"), entry("b", 1, "y"), entry("c", 1, "z")];
        assert_eq!(first_change(&old, &old), None);
        let changed = [entry("a", 1, "x"), entry("b", 2, "w"), entry("c", 1, "q")];
        let said = first_change(&old, &changed).unwrap();
        assert!(
            said.starts_with("b changed (1 bytes, sha256 y recorded; 2 bytes"),
            "{said}"
        );
        let gone = [entry("a", 1, "x"), entry("c", 1, "z")];
        assert_eq!(
            first_change(&old, &gone).unwrap(),
            "b was read then and is gone now"
        );
        assert_eq!(first_change(&gone, &old).unwrap(), "b is new");
        assert_eq!(
            first_change(&old, &old[..2]).unwrap(),
            "c was read then and is gone now"
        );
    }

    #[test]
    fn manifests_round_trip_through_the_gzipped_csv() {
        let dir = tempfile::tempdir().unwrap();
        let a = Manifest::new(
            Path::new("x"),
            Path::new("x"),
            vec![entry("p,q.png", 1, "aa"), entry("m.png", 2, "bb")],
        );
        let b = Manifest::new(Path::new("y"), Path::new("y"), vec![entry("n", 3, "cc")]);
        let path = dir.path().join(MANIFEST_FILE);
        write_manifests(&path, &[&a, &b, &a]).unwrap();
        assert_eq!(read_manifest(&path, "x").unwrap(), a.entries());
        assert_eq!(read_manifest(&path, "y").unwrap(), b.entries());
        assert!(read_manifest(&path, "z").unwrap().is_empty());
        std::fs::write(&path, b"not gzip").unwrap();
        let err = read_manifest(&path, "x").unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
    }

    #[test]
    fn older_file_lists_match_the_same_files_in_any_order() {
        let m = Manifest::new(
            Path::new("d/imgs"),
            Path::new("d/imgs"),
            vec![entry("a/1.png", 3, "aa"), entry("b/2.png", 5, "bb")],
        );
        let mut listed = m.as_files();
        assert_eq!(listed[0].path, "d/imgs/a/1.png");
        listed.reverse();
        assert!(SourceRecord::Files(listed.clone()).matches(&m));
        listed[0].sha256 = "cc".into();
        assert!(!SourceRecord::Files(listed).matches(&m));
        assert!(SourceRecord::of(&m).matches(&m));
        assert_eq!(SourceRecord::of(&m).totals(), (2, 8));
        // both shapes read back from JSON
        let old: SourceRecord =
            serde_json::from_str(r#"[{"path":"x","bytes":1,"sha256":"aa"}]"#).unwrap();
        assert_eq!(old.totals(), (1, 1));
        let empty: SourceRecord = serde_json::from_str("[]").unwrap();
        assert_eq!(empty, SourceRecord::default());
        let new: SourceRecord =
            serde_json::from_str(&serde_json::to_string(&SourceRecord::of(&m)).unwrap()).unwrap();
        assert_eq!(new, SourceRecord::of(&m));
    }
}
