//! What the pickle machine builds: plain Python values, containers kept in an arena, and the
//! few torch objects it understands (storages and tensors, as descriptions, never as code).

use super::allow::Global;
use crate::dtype::Dtype;
use std::rc::Rc;

/// Index of a container in the [`Heap`].
pub(crate) type NodeId = usize;

/// A value on the machine's stack or in a container. Containers are indices into the
/// [`Heap`], so a hostile pickle that nests them a million deep or makes one contain itself
/// costs neither recursion (when dropping or comparing) nor a reference cycle.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64, as little-endian two's-complement bytes.
    BigInt(Rc<[u8]>),
    /// Floats and bytes are kept only as kinds: nothing read from a checkpoint needs their
    /// values (`best_prec1` and the like are skipped).
    Float,
    Str(Rc<str>),
    Bytes,
    Tuple(NodeId),
    List(NodeId),
    Dict(NodeId),
    Global(Global),
    Storage(Rc<Storage>),
    Tensor(Rc<TensorSpec>),
}

impl Value {
    /// "a list", "an int", ...: for messages about what was found instead.
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) | Value::BigInt(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Bytes => "a bytes object",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a function or class",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }
}

/// A storage as a persistent id names it: its key in the file and its element type.
#[derive(Debug, PartialEq)]
pub(crate) struct Storage {
    pub(crate) key: Rc<str>,
    pub(crate) dtype: Dtype,
}

/// A tensor as `torch._utils._rebuild_tensor_v2` would build it: a strided view of a storage,
/// offset and strides in elements.
#[derive(Debug)]
pub(crate) struct TensorSpec {
    pub(crate) storage: Rc<Storage>,
    pub(crate) offset: usize,
    pub(crate) shape: Vec<usize>,
    pub(crate) stride: Vec<usize>,
}

/// The containers of one pickle. Tuples and lists share `seqs`.
#[derive(Debug, Default)]
pub(crate) struct Heap {
    seqs: Vec<Vec<Value>>,
    dicts: Vec<Vec<(Value, Value)>>,
}

impl Heap {
    pub(crate) fn new_seq(&mut self, items: Vec<Value>) -> NodeId {
        self.seqs.push(items);
        self.seqs.len() - 1
    }

    pub(crate) fn new_dict(&mut self, pairs: Vec<(Value, Value)>) -> NodeId {
        self.dicts.push(pairs);
        self.dicts.len() - 1
    }

    pub(crate) fn seq(&self, id: NodeId) -> &[Value] {
        &self.seqs[id]
    }

    pub(crate) fn seq_mut(&mut self, id: NodeId) -> &mut Vec<Value> {
        &mut self.seqs[id]
    }

    /// A dict's entries in insertion order; a key set twice appears twice.
    pub(crate) fn dict(&self, id: NodeId) -> &[(Value, Value)] {
        &self.dicts[id]
    }

    pub(crate) fn dict_mut(&mut self, id: NodeId) -> &mut Vec<(Value, Value)> {
        &mut self.dicts[id]
    }

    /// The value under the string key `key`; the last one wins, as in Python.
    pub(crate) fn get<'v>(&'v self, dict: NodeId, key: &str) -> Option<&'v Value> {
        self.dict(dict)
            .iter()
            .rev()
            .find(|(k, _)| matches!(k, Value::Str(s) if &**s == key))
            .map(|(_, v)| v)
    }
}
