//! The zip format `torch.save` writes since PyTorch 1.6: `<root>/data.pkl` holds the pickled
//! object, `<root>/data/<key>` each storage's raw bytes and `<root>/byteorder` their byte
//! order. torch stores the entries uncompressed; the zip crate checks their CRCs as it reads.

use crate::assemble::{assemble, ElementBudget};
use crate::error::{one_line, quoted, Checked, Problem};
use crate::pickle::unpickle;
use crate::state_dict::{named_tensors, Location};
use crate::TorchTensor;
use std::borrow::Cow;
use std::io::{Cursor, Read};
use zip::result::ZipError;
use zip::ZipArchive;

/// The archive, with the size of the file it is in.
struct Archive<'a> {
    zip: ZipArchive<Cursor<&'a [u8]>>,
    file_len: u64,
}

pub(crate) fn read(
    bytes: &[u8],
    budget: &mut ElementBudget,
    key: Option<&str>,
) -> Checked<(Vec<TorchTensor>, Location)> {
    let mut zip = Archive {
        zip: ZipArchive::new(Cursor::new(bytes)).map_err(archive_error)?,
        file_len: bytes.len() as u64,
    };
    let root = root_folder(&zip)?;
    check_byte_order(&mut zip, &root)?;
    let pickle_name = format!("{root}/data.pkl");
    let pickle = read_entry(&mut zip, &pickle_name)?
        .ok_or_else(|| Problem::Archive(format!("no entry {}", quoted(&pickle_name))))?;
    let object = unpickle(&pickle, 0)?;
    let (named, location) = named_tensors(&object.root, &object.heap, key)?;
    let tensors = assemble(named, budget, |storage, user| {
        let name = format!("{root}/data/{}", storage.key);
        match read_entry(&mut zip, &name)? {
            Some(data) => Ok(Cow::Owned(data)),
            None => Err(Problem::Archive(format!(
                "no entry {} for the storage of {}",
                quoted(&name),
                quoted(user)
            ))),
        }
    })?;
    Ok((tensors, location))
}

/// The folder holding `data.pkl`: torch names it after the file it first saved to.
fn root_folder(zip: &Archive) -> Checked<String> {
    let mut roots = zip
        .zip
        .file_names()
        .filter_map(|name| name.strip_suffix("/data.pkl"))
        .filter(|root| !root.contains('/'));
    match (roots.next(), roots.next()) {
        (Some(root), None) => Ok(root.to_string()),
        (None, _) => Err(Problem::Archive(
            "no `<folder>/data.pkl` entry: a zip archive, but not one torch.save wrote".into(),
        )),
        (Some(first), Some(second)) => Err(Problem::Archive(format!(
            "two pickles, {} and {}",
            quoted(&format!("{first}/data.pkl")),
            quoted(&format!("{second}/data.pkl"))
        ))),
    }
}

/// Refuses big-endian archives; archives from before torch recorded the order are little.
fn check_byte_order(zip: &mut Archive, root: &str) -> Checked<()> {
    match read_entry(zip, &format!("{root}/byteorder"))?.as_deref() {
        None | Some(b"little") => Ok(()),
        Some(b"big") => Err(Problem::Unsupported(
            "the archive's byteorder entry says `big`: only little-endian checkpoints are read"
                .into(),
        )),
        Some(other) => Err(Problem::Archive(format!(
            "the byteorder entry holds {}, not `little` or `big`",
            quoted(&String::from_utf8_lossy(other))
        ))),
    }
}

/// The contents of entry `name`, or None when the archive has none.
fn read_entry(zip: &mut Archive, name: &str) -> Checked<Option<Vec<u8>>> {
    let mut entry = match zip.zip.by_name(name) {
        Ok(entry) => entry,
        Err(ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(archive_error(e)),
    };
    // Stored entries cannot be larger than the file; a larger claim is not believed.
    if entry.size() > zip.file_len {
        return Err(Problem::Archive(format!(
            "entry {} claims {} bytes, more than the whole file",
            quoted(name),
            entry.size()
        )));
    }
    let mut data = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut data).map_err(|e| {
        Problem::Archive(format!(
            "entry {}: {}",
            quoted(name),
            one_line(&e.to_string())
        ))
    })?;
    Ok(Some(data))
}

fn archive_error(e: ZipError) -> Problem {
    Problem::Archive(one_line(&e.to_string()))
}
