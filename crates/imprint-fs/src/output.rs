//! Where a job may write: its output folder, which belongs to imprint and is held locked while a
//! job writes there, and single output files, which never land on an input or a special file.
//!
//! An output folder holds a marker file, [`MARKER`], written before anything else. A job holds
//! an advisory lock on the marker for as long as it writes (and writes its process id beside it,
//! in [`HOLDER`], so that a second job can be told whose the folder is). `--force` replaces only
//! a folder that holds the marker, or that an older version wrote (the caller recognises those),
//! and never a folder that holds, or lies inside, an input of the command.

use crate::{at, remove_dir_if_present, write_atomic, FsError};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The marker of an output folder; the lock is taken on it.
pub const MARKER: &str = ".imprint-output";
/// The process id of the job writing the folder, present while it runs.
pub const HOLDER: &str = ".imprint-output.pid";

const MARKER_TEXT: &str = "This folder is an output folder of imprint: `--force` may replace it \
with everything in it.\nA job writing here holds a lock on this file; its process id is in \
.imprint-output.pid.\n";

/// How long a job that finds a folder locked waits for the holder's process id to appear: the
/// holder writes it right after taking the lock.
const HOLDER_WAIT: Duration = Duration::from_secs(2);

/// A file or folder a command reads, which its outputs must leave alone.
#[derive(Clone, Debug)]
pub struct Input {
    /// What the command calls it: `data.labeled`, `--init`, `the pipeline file`...
    pub role: String,
    pub path: PathBuf,
}

impl Input {
    pub fn new(role: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            role: role.into(),
            path: path.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("--out is empty; name a folder")]
    Unnamed,
    #[error("{}: --out names a file, not a folder; choose a folder", .0.display())]
    NotAFolder(PathBuf),
    #[error(
        "{}: output folder exists and is not empty; choose another --out or pass --force",
        .0.display()
    )]
    NotEmpty(PathBuf),
    #[error(
        "{}: another imprint job ({}) is writing this output folder; wait for it to finish or \
         choose another --out",
        .path.display(),
        .pid.map_or("process id unknown".to_string(), |p| format!("process id {p}"))
    )]
    InUse { path: PathBuf, pid: Option<u32> },
    #[error(
        "{}: not an output folder of imprint ({why}); --force replaces only a folder imprint \
         wrote: choose another --out",
        .path.display()
    )]
    NotOurs { path: PathBuf, why: String },
    #[error(
        "{}: holds {} ({}), an input of this command; choose another {flag}",
        .path.display(), .input.role, .input.path.display()
    )]
    HoldsInput {
        path: PathBuf,
        input: Input,
        flag: &'static str,
    },
    #[error(
        "{}: lies inside {} ({}), an input of this command; choose another {flag} outside it",
        .path.display(), .input.role, .input.path.display()
    )]
    InsideInput {
        path: PathBuf,
        input: Input,
        flag: &'static str,
    },
    #[error(
        "{}: is also an input of this command ({} {}); choose another file",
        .path.display(), .input.role, .input.path.display()
    )]
    IsInput { path: PathBuf, input: Input },
    #[error(
        "{}: exists; pass --force to replace it, or choose another file",
        .0.display()
    )]
    FileExists(PathBuf),
    #[error("{}: is {kind}, not a regular file; name a file", .path.display())]
    NotAFile { path: PathBuf, kind: String },
    #[error(
        "{}: the folder {} does not exist; create it, or choose another path",
        .path.display(), .folder.display()
    )]
    NoFolder { path: PathBuf, folder: PathBuf },
    #[error(transparent)]
    Fs(#[from] FsError),
}

type Result<T> = std::result::Result<T, OutputError>;

/// What a job asks of its output folder.
pub struct Claim<'a> {
    /// Replace a folder of earlier outputs.
    pub force: bool,
    /// Continue the job whose outputs the folder holds, in place.
    pub resume: bool,
    /// What the command reads; the folder may neither hold nor lie inside any of them.
    pub inputs: &'a [Input],
    /// For a non-empty folder without the marker: `Ok` when an older version of imprint wrote
    /// it, else why it is not an output folder.
    pub earlier_output: &'a dyn Fn(&Path) -> std::result::Result<(), String>,
}

/// A job's output folder, held locked until the job ends. A run allowed to replace a folder
/// that already holds outputs writes beside it, in `.<name>.incomplete`, and takes the
/// folder's place only in [`OutputDir::finish`]: a run that fails or is stopped leaves the
/// earlier outputs as they were. Dropping an unfinished one removes what it wrote beside, and
/// any folder it created that holds no file.
pub struct OutputDir {
    target: PathBuf,
    /// `target` made absolute, for names beside it.
    resolved: PathBuf,
    staging: Option<PathBuf>,
    /// Folders this job created for `target`.
    created: NewFolders,
    /// Whether this job put the marker into `target`.
    made_marker: bool,
    /// Open markers whose locks this job holds (released when they close).
    locks: Vec<File>,
    /// Whether this job holds `target`'s lock (and wrote its process id there).
    held: bool,
    finished: bool,
}

impl OutputDir {
    /// Claims `target` for a job: creates it if missing, takes its lock, and decides where the
    /// job writes (in place when the folder is new or empty, or with `resume`; beside it when
    /// `force` replaces earlier outputs).
    pub fn create(target: &Path, claim: &Claim) -> Result<Self> {
        if target.as_os_str().is_empty() {
            return Err(OutputError::Unnamed);
        }
        let exists = match fs::metadata(target) {
            Ok(m) if m.is_dir() => true,
            Ok(_) => return Err(OutputError::NotAFolder(target.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(at(target)(e).into()),
        };
        let resolved = resolved(target);
        check_folder_inputs(target, &resolved, claim.inputs, "--out")?;

        // A folder that holds the marker is locked before anything else is looked at; one
        // that does not is screened first, so that a folder the job must refuse never gets a
        // marker.
        let mut held = None;
        if exists {
            if let Some(marker) = open_marker(target, false)? {
                lock(&marker, target)?;
                held = Some(marker);
            } else {
                decide(target, claim, false)?;
            }
        }
        let created = if exists {
            NewFolders::default()
        } else {
            NewFolders::create(target)?
        };
        let mut dir = OutputDir {
            target: target.to_path_buf(),
            resolved,
            staging: None,
            created,
            made_marker: false,
            locks: Vec::new(),
            held: false,
            finished: false,
        };
        let had_marker = held.is_some();
        let marker = match held {
            Some(marker) => marker,
            None => {
                let marker = match open_marker(target, false)? {
                    Some(existing) => existing,
                    None => match open_marker(target, true)? {
                        Some(made) => {
                            dir.made_marker = true;
                            made
                        }
                        // Another job made it between the two looks: its lock decides. Gone
                        // again, that job failed at once, and this one is refused as in use.
                        None => open_marker(target, false)?.ok_or_else(|| OutputError::InUse {
                            path: target.to_path_buf(),
                            pid: holder(target),
                        })?,
                    },
                };
                lock(&marker, target)?;
                marker
            }
        };
        dir.locks.push(marker);
        dir.held = true;
        write_atomic(
            target.join(HOLDER),
            std::process::id().to_string().as_bytes(),
        )?;
        // Decided again under the lock: another job may have written here meanwhile.
        if decide(target, claim, had_marker || !dir.made_marker)? == Mode::Beside {
            let staging = dir.beside("incomplete");
            // A leftover of a job that was killed: no live job writes there without holding
            // the folder's lock, which this one holds.
            remove_dir_if_present(&staging)?;
            fs::create_dir(&staging).map_err(at(&staging))?;
            dir.staging = Some(staging.clone());
            // A fresh folder only this job, holding the lock, writes into.
            let marker = open_marker(&staging, true)?.expect("created");
            lock(&marker, &staging)?;
            dir.locks.push(marker);
            write_atomic(
                staging.join(HOLDER),
                std::process::id().to_string().as_bytes(),
            )?;
        }
        Ok(dir)
    }

    fn beside(&self, what: &str) -> PathBuf {
        let name = self
            .resolved
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.resolved.with_file_name(format!(".{name}.{what}"))
    }

    /// Where the job writes.
    pub fn path(&self) -> &Path {
        self.staging.as_deref().unwrap_or(&self.target)
    }

    /// Where the outputs end up.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Puts the finished outputs in place of the earlier ones.
    pub fn finish(mut self) -> std::result::Result<PathBuf, FsError> {
        if let Some(staging) = self.staging.take() {
            // The folder itself is replaced, not a link to it (the link then leads to the new
            // outputs); the staging folder lies beside it.
            let real = &self.resolved;
            let replaced = self.beside("replaced");
            remove_dir_if_present(&replaced)?;
            fs::rename(real, &replaced).map_err(at(&self.target))?;
            if let Err(e) = fs::rename(&staging, real) {
                let _ = fs::rename(&replaced, real);
                self.staging = Some(staging);
                return Err(at(&self.target)(e));
            }
            remove_dir_if_present(&replaced)?;
        }
        self.finished = true;
        self.created.keep();
        Ok(self.target.clone())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if self.held {
            // The process id goes before the lock, so that no later holder's is removed.
            let _ = fs::remove_file(self.target.join(HOLDER));
            if self.finished {
                return;
            }
            match &self.staging {
                Some(staging) => {
                    let _ = fs::remove_dir_all(staging);
                    if self.made_marker {
                        let _ = fs::remove_file(self.target.join(MARKER));
                    }
                }
                None => remove_if_fileless(&self.target),
            }
        }
        // Then `created` goes, with the folders this job made that hold nothing now.
    }
}

/// The folders created for an output that did not exist, outermost first. Dropped before
/// [`NewFolders::keep`], it removes those that hold nothing (a job that failed early).
#[derive(Default)]
pub struct NewFolders(Vec<PathBuf>);

impl NewFolders {
    /// Creates `dir` and its missing parents.
    pub fn create(dir: &Path) -> std::result::Result<Self, FsError> {
        let mut missing: Vec<&Path> = dir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
            .collect();
        missing.reverse();
        let mut made = NewFolders::default();
        for folder in missing {
            match fs::create_dir(folder) {
                Ok(()) => made.0.push(folder.to_path_buf()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && folder.is_dir() => {}
                Err(e) => return Err(at(folder)(e)),
            }
        }
        Ok(made)
    }

    /// The output is complete: the folders stay.
    pub fn keep(&mut self) {
        self.0.clear();
    }
}

impl Drop for NewFolders {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            // Fails, as it should, on a folder that holds anything.
            let _ = fs::remove_dir(dir);
        }
    }
}

#[derive(Debug, PartialEq)]
enum Mode {
    InPlace,
    Beside,
}

/// Where a job writes into `target`, or why it may not: an empty folder is written in place; a
/// non-empty one needs `resume` or `force`, and must be imprint's.
fn decide(target: &Path, claim: &Claim, has_marker: bool) -> Result<Mode> {
    if contents(target)?.is_empty() {
        return Ok(Mode::InPlace);
    }
    if !claim.force && !claim.resume {
        return Err(OutputError::NotEmpty(target.to_path_buf()));
    }
    if !has_marker {
        (claim.earlier_output)(target).map_err(|why| OutputError::NotOurs {
            path: target.to_path_buf(),
            why,
        })?;
    }
    Ok(if claim.resume {
        Mode::InPlace
    } else {
        Mode::Beside
    })
}

/// The entries of `dir` other than the marker and the holder's process id.
fn contents(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(at(dir))? {
        let entry = entry.map_err(at(dir))?;
        let name = entry.file_name();
        if name != MARKER && name != HOLDER {
            found.push(entry.path());
        }
    }
    Ok(found)
}

/// Opens the marker of `dir` for locking: the existing one, or with `create` a new one (which
/// must not exist yet). `None` when there is none and `create` is off, or when `create` finds
/// one another job has just made.
fn open_marker(dir: &Path, create: bool) -> Result<Option<File>> {
    let path = dir.join(MARKER);
    if create {
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(at(&path)(e).into()),
        };
        file.write_all(MARKER_TEXT.as_bytes()).map_err(at(&path))?;
        return Ok(Some(file));
    }
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(OutputError::NotOurs {
                path: dir.to_path_buf(),
                why: format!("its {MARKER} is not a regular file"),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(at(&path)(e).into()),
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(at(&path))?;
    Ok(Some(file))
}

/// Takes the lock on `marker` (of the folder `dir`), or names the job that holds it.
fn lock(marker: &File, dir: &Path) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        match fs4::FileExt::try_lock(marker) {
            Ok(()) => return Ok(()),
            Err(fs4::TryLockError::WouldBlock) => {
                let pid = holder(dir);
                if pid.is_some() || start.elapsed() > HOLDER_WAIT {
                    return Err(OutputError::InUse {
                        path: dir.to_path_buf(),
                        pid,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(fs4::TryLockError::Error(e)) => return Err(at(&dir.join(MARKER))(e).into()),
        }
    }
}

/// The process id a job holding `dir` wrote there.
fn holder(dir: &Path) -> Option<u32> {
    let path = dir.join(HOLDER);
    let meta = fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() || meta.len() > 32 {
        return None;
    }
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Removes the folders under `dir` and its marker when it holds no file besides the marker:
/// what a job that failed before writing anything leaves.
fn remove_if_fileless(dir: &Path) {
    fn has_files(dir: &Path) -> bool {
        let Ok(entries) = fs::read_dir(dir) else {
            return true;
        };
        entries.flatten().any(|e| {
            let name = e.file_name();
            if name == MARKER || name == HOLDER {
                return false;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => has_files(&e.path()),
                _ => true,
            }
        })
    }
    fn remove_folders(dir: &Path) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_folders(&entry.path());
                let _ = fs::remove_dir(entry.path());
            }
        }
    }
    if !has_files(dir) {
        remove_folders(dir);
        let _ = fs::remove_file(dir.join(MARKER));
    }
}

/// `path` absolute, with `.` and `..` taken out and symbolic links resolved as far as it exists.
pub fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                // The parent of a link is that of its target.
                if let Ok(real) = out.canonicalize() {
                    out = real;
                }
                out.pop();
            }
            other => out.push(other),
        }
    }
    let mut tail = Vec::new();
    let mut head = out.as_path();
    loop {
        if let Ok(real) = head.canonicalize() {
            return tail.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                head = parent;
            }
            _ => return out,
        }
    }
}

/// Refuses an output folder that holds, or lies inside, one of `inputs`.
fn check_folder_inputs(
    path: &Path,
    resolved_path: &Path,
    inputs: &[Input],
    flag: &'static str,
) -> Result<()> {
    for input in inputs {
        let source = resolved(&input.path);
        if source.starts_with(resolved_path) {
            return Err(OutputError::HoldsInput {
                path: path.to_path_buf(),
                input: input.clone(),
                flag,
            });
        }
        if resolved_path.starts_with(&source) {
            return Err(OutputError::InsideInput {
                path: path.to_path_buf(),
                input: input.clone(),
                flag,
            });
        }
    }
    Ok(())
}

/// Checks that a single-file output may go to `path`: a new file in an existing folder, or,
/// with `force`, an existing regular file; never one of `inputs` or a path inside an input
/// folder, and never a folder, device, FIFO or socket. Returns the file to write: `path`, or
/// the file a symbolic link at `path` points to.
pub fn output_file(path: &Path, force: bool, inputs: &[Input]) -> Result<PathBuf> {
    let kind = |t: fs::FileType| {
        if t.is_file() {
            None
        } else if t.is_dir() {
            Some("a folder")
        } else {
            Some(special_kind(t))
        }
    };
    let not_a_file = |kind: String| OutputError::NotAFile {
        path: path.to_path_buf(),
        kind,
    };
    let target = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let folder = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if !folder.is_dir() {
                return Err(OutputError::NoFolder {
                    path: path.to_path_buf(),
                    folder: folder.to_path_buf(),
                });
            }
            path.to_path_buf()
        }
        Err(e) => return Err(at(path)(e).into()),
        Ok(meta) if meta.file_type().is_symlink() => {
            let real = fs::canonicalize(path)
                .map_err(|_| not_a_file("a symbolic link to nothing".into()))?;
            let meta = fs::metadata(&real).map_err(at(&real))?;
            if let Some(k) = kind(meta.file_type()) {
                return Err(not_a_file(format!(
                    "a symbolic link to {k} ({})",
                    real.display()
                )));
            }
            real
        }
        Ok(meta) => {
            if let Some(k) = kind(meta.file_type()) {
                return Err(not_a_file(k.into()));
            }
            path.to_path_buf()
        }
    };
    let resolved_path = resolved(&target);
    for input in inputs {
        let source = resolved(&input.path);
        if source == resolved_path {
            return Err(OutputError::IsInput {
                path: path.to_path_buf(),
                input: input.clone(),
            });
        }
        if resolved_path.starts_with(&source) {
            return Err(OutputError::InsideInput {
                path: path.to_path_buf(),
                input: input.clone(),
                flag: "path",
            });
        }
    }
    if target.exists() && !force {
        return Err(OutputError::FileExists(path.to_path_buf()));
    }
    Ok(target)
}

/// What a file that is neither a regular file nor a folder is.
#[cfg(unix)]
fn special_kind(t: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: fs::FileType) -> &'static str {
    "a special file"
}

#[cfg(all(test, unix))]
mod tests;
