//! Finding the state dict in an unpickled checkpoint: the top-level dict itself, or the dict
//! a training script saved under a key beside entries such as `epoch` or `optimizer`, which
//! are ignored. The key is the caller's, or found: a known holder (`state_dict`, `model`,
//! `ema`, ...; see [`HOLDERS`]), else the only dict of tensors at the top level.

use crate::error::{quoted, Checked, Problem};
use crate::pickle::{Heap, TensorSpec, Value};
use std::collections::BTreeMap;
use std::rc::Rc;

/// Keys under which training scripts keep their state dict, in the order they are tried:
/// plain scripts and Lightning (`state_dict`), the common names of hand-written loops, then
/// the averaged copies timm and torchvision's references keep beside the trained weights.
pub const HOLDERS: [&str; 10] = [
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "net",
    "network",
    "state_dict_ema",
    "model_ema",
    "ema",
    "ema_state_dict",
];

/// Where the state dict was found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// The top-level key holding it; `None` when the top-level dict is the state dict.
    pub key: Option<String>,
    /// Other top-level keys that hold dicts of tensors (an EMA copy beside the weights): what
    /// else could be read instead.
    pub others: Vec<String>,
}

/// The tensors of the state dict in `root`, by name (sorted), and where they were; under
/// `key` when given.
pub(crate) fn named_tensors(
    root: &Value,
    heap: &Heap,
    key: Option<&str>,
) -> Checked<(BTreeMap<String, Rc<TensorSpec>>, Location)> {
    let Value::Dict(top) = *root else {
        return Err(Problem::NoStateDict(format!(
            "the top-level object is {}",
            root.describe()
        )));
    };
    // Top-level keys whose values are dicts holding tensors, in file order.
    let holders: Vec<(String, usize)> = heap
        .dict(top)
        .iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::Str(name), Value::Dict(inner)) if holds_tensors(heap, *inner) => {
                Some((name.to_string(), *inner))
            }
            _ => None,
        })
        .collect();
    let names = |list: &[(String, usize)]| -> Vec<String> {
        list.iter().map(|(name, _)| name.clone()).collect()
    };
    let chosen = match key {
        Some(key) => match heap.get(top, key) {
            Some(Value::Dict(dict)) if holds_tensors(heap, *dict) => Some((key.to_string(), *dict)),
            _ => {
                return Err(Problem::NoStateDict(format!(
                    "no dict of tensors under {}; {}",
                    quoted(key),
                    found_text(heap, top, &names(&holders))
                )))
            }
        },
        None => HOLDERS
            .iter()
            .find_map(|&known| holders.iter().find(|(name, _)| name == known).cloned())
            .or_else(|| match holders.as_slice() {
                [only] if !holds_tensors(heap, top) => Some(only.clone()),
                _ => None,
            }),
    };
    if chosen.is_none() && holders.len() > 1 {
        return Err(Problem::AmbiguousStateDict(names(&holders)));
    }
    let (place, dict) = match &chosen {
        Some((key, dict)) => (quoted(key), *dict),
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
                    "{place} holds a nested dict of tensors under {}; only one level is read",
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
    let key = chosen.map(|(key, _)| key);
    let others = names(&holders)
        .into_iter()
        .filter(|name| Some(name) != key.as_ref())
        .collect();
    Ok((tensors, Location { key, others }))
}

fn holds_tensors(heap: &Heap, dict: usize) -> bool {
    heap.dict(dict)
        .iter()
        .any(|(_, value)| matches!(value, Value::Tensor(_)))
}

/// What the top level offers, for a message about a key that is not there.
fn found_text(heap: &Heap, top: usize, holders: &[String]) -> String {
    if holders.is_empty() {
        return format!(
            "the top-level keys are {}, none holding a dict of tensors",
            keys_text(heap, top)
        );
    }
    let quoted_holders: Vec<String> = holders.iter().map(|h| quoted(h)).collect();
    format!("dicts of tensors are under {}", quoted_holders.join(", "))
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
