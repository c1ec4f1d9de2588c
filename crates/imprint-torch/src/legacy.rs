//! The format `torch.save` wrote before PyTorch 1.6 (and still writes when asked with
//! `_use_new_zipfile_serialization=False`): five pickles in a row (a magic number, the
//! protocol version, facts about the saving machine, the object, the list of storage keys),
//! then each listed storage in that order as an 8-byte little-endian element count followed
//! by its raw bytes.

use crate::assemble::{assemble, ElementBudget};
use crate::error::{quoted, Checked, Problem};
use crate::pickle::{unpickle, TensorSpec, Unpickled, Value};
use crate::state_dict::{named_tensors, Location};
use crate::TorchTensor;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

/// 0x1950a86a20f9469cfc6c, as LONG1 pickles it (little-endian).
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const PROTOCOL_VERSION: i64 = 1001;

pub(crate) fn read(
    bytes: &[u8],
    budget: &mut ElementBudget,
    key: Option<&str>,
) -> Checked<(Vec<TorchTensor>, Location)> {
    let magic = unpickle(bytes, 0)?;
    if !matches!(&magic.root, Value::BigInt(b) if **b == MAGIC) {
        return Err(Problem::Unsupported(
            "a pickle without torch.save's magic number: not a PyTorch checkpoint".into(),
        ));
    }
    let version = unpickle(bytes, magic.end)?;
    if !matches!(version.root, Value::Int(PROTOCOL_VERSION)) {
        return Err(Problem::Unsupported(format!(
            "the legacy format's protocol version is not {PROTOCOL_VERSION}"
        )));
    }
    let sys_info = unpickle(bytes, version.end)?;
    check_little_endian(&sys_info)?;
    let object = unpickle(bytes, sys_info.end)?;
    let keys = unpickle(bytes, object.end)?;
    let (named, location) = named_tensors(&object.root, &object.heap, key)?;
    let storages = storage_data(bytes, keys.end, &storage_keys(&keys)?, &object, &named)?;
    let tensors = assemble(named, budget, |storage, user| {
        storages
            .get(&*storage.key)
            .map(|&data| Cow::Borrowed(data))
            .ok_or_else(|| {
                Problem::Pickle(format!(
                    "the storage of {} is missing from the list of storages",
                    quoted(user)
                ))
            })
    })?;
    Ok((tensors, location))
}

fn check_little_endian(sys_info: &Unpickled) -> Checked<()> {
    let Value::Dict(id) = sys_info.root else {
        return Err(Problem::Pickle(format!(
            "the system information is {}, not a dict",
            sys_info.root.describe()
        )));
    };
    match sys_info.heap.get(id, "little_endian") {
        Some(Value::Bool(false)) => Err(Problem::Unsupported(
            "the checkpoint was saved big-endian: only little-endian checkpoints are read".into(),
        )),
        _ => Ok(()),
    }
}

fn storage_keys(keys: &Unpickled) -> Checked<Vec<Rc<str>>> {
    let not_keys = || Problem::Pickle("the list of storage keys is not a list of strings".into());
    let Value::List(id) = keys.root else {
        return Err(not_keys());
    };
    keys.heap
        .seq(id)
        .iter()
        .map(|key| match key {
            Value::Str(key) => Ok(key.clone()),
            _ => Err(not_keys()),
        })
        .collect()
}

/// Each listed storage's bytes, walking the data section from `start`. Storages of objects
/// other than the state dict (an optimizer's, say) are walked past too.
fn storage_data<'a>(
    bytes: &'a [u8],
    start: usize,
    keys: &[Rc<str>],
    object: &Unpickled,
    named: &BTreeMap<String, Rc<TensorSpec>>,
) -> Checked<HashMap<Rc<str>, &'a [u8]>> {
    let users = first_users(named);
    let mut rest = bytes.get(start..).unwrap_or_default();
    let mut storages = HashMap::new();
    for key in keys {
        let storage = object.storages.get(key).ok_or_else(|| {
            Problem::Pickle(format!(
                "the list of storages names {}, which no tensor uses",
                quoted(key)
            ))
        })?;
        let what = match users.get(&**key) {
            Some(name) => format!("the storage of {}", quoted(name)),
            None => format!("storage {}", quoted(key)),
        };
        let Some((count, tail)) = rest.split_first_chunk::<8>() else {
            return Err(Problem::Truncated(format!(
                "{what} needs an 8-byte element count, {} bytes remain",
                rest.len()
            )));
        };
        let needed = u128::from(u64::from_le_bytes(*count)) * storage.dtype.size() as u128;
        let Some(data) = usize::try_from(needed).ok().and_then(|n| tail.get(..n)) else {
            return Err(Problem::Truncated(format!(
                "{what} needs {needed} bytes, {} remain",
                tail.len()
            )));
        };
        rest = &tail[data.len()..];
        storages.insert(key.clone(), data);
    }
    Ok(storages)
}

/// For each storage key, the first tensor name (in order) that views it.
fn first_users(named: &BTreeMap<String, Rc<TensorSpec>>) -> HashMap<&str, &str> {
    let mut users = HashMap::new();
    for (name, spec) in named {
        users.entry(&*spec.storage.key).or_insert(name.as_str());
    }
    users
}
