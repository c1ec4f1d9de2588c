//! Finding the state dict in an unpickled checkpoint: the top-level dict itself, or the dict
//! a training script saved under `state_dict` (or `model_state_dict`, `model`, `net`) beside
//! entries such as `epoch` or `optimizer`, which are ignored.

use crate::error::{quoted, Checked, Problem};
use crate::pickle::{Heap, TensorSpec, Value};
use std::collections::BTreeMap;
use std::rc::Rc;

/// Keys under which checkpoints keep their state dict, in the order they are tried.
const HOLDERS: [&str; 4] = ["state_dict", "model_state_dict", "model", "net"];

/// The tensors of the state dict in `root`, by name (sorted).
pub(crate) fn named_tensors(
    root: &Value,
    heap: &Heap,
) -> Checked<BTreeMap<String, Rc<TensorSpec>>> {
    let Value::Dict(top) = *root else {
        return Err(Problem::NoStateDict(format!(
            "the top-level object is {}",
            root.describe()
        )));
    };
    let holder = HOLDERS.iter().find_map(|&key| match heap.get(top, key) {
        Some(Value::Dict(dict)) => Some((key, *dict)),
        _ => None,
    });
    let (place, dict) = match holder {
        Some((key, dict)) => (quoted(key), dict),
        None => ("the top-level dict".to_string(), top),
    };
    let mut tensors = BTreeMap::new();
    for (key, value) in heap.dict(dict) {
        match (key, value) {
            // A key set twice keeps its last value, as in Python.
            (Value::Str(name), Value::Tensor(spec)) => {
                tensors.insert(name.to_string(), spec.clone());
            }
            (other, Value::Tensor(_)) => {
                return Err(Problem::Unsupported(format!(
                    "{place} keys a tensor by {}, not by a name",
                    other.describe()
                )))
            }
            (key, Value::Dict(inner)) if holds_tensors(heap, *inner) => {
                return Err(Problem::Unsupported(format!(
                    "{place} holds a nested dict of tensors under {}; only one level is read \
                     (a state dict, or one under `state_dict`, `model_state_dict`, `model` or \
                     `net`)",
                    key_text(key)
                )))
            }
            _ => {}
        }
    }
    if tensors.is_empty() {
        return Err(Problem::NoStateDict(format!(
            "{place} holds no tensors (its keys: {})",
            keys_text(heap, dict)
        )));
    }
    Ok(tensors)
}

fn holds_tensors(heap: &Heap, dict: usize) -> bool {
    heap.dict(dict)
        .iter()
        .any(|(_, value)| matches!(value, Value::Tensor(_)))
}

fn key_text(key: &Value) -> String {
    match key {
        Value::Str(text) => quoted(text),
        other => other.describe().to_string(),
    }
}

/// The first few keys, for a message about a dict without tensors.
fn keys_text(heap: &Heap, dict: usize) -> String {
    const SHOWN: usize = 8;
    let keys = heap.dict(dict);
    if keys.is_empty() {
        return "none".into();
    }
    let mut text: Vec<String> = keys.iter().take(SHOWN).map(|(k, _)| key_text(k)).collect();
    if keys.len() > SHOWN {
        text.push(format!("and {} more", keys.len() - SHOWN));
    }
    text.join(", ")
}
