//! The pickle machine: runs the opcodes `torch.save` emits (protocol 2, plus the framing,
//! memo and STACK_GLOBAL opcodes of protocols 4 and 5 that Python's own pickles use), building
//! values instead of objects. It imports nothing and calls nothing: a global is checked
//! against the allow-list as soon as it is named, and the few allowed calls are interpreted
//! by `calls`. Other opcodes are refused by name.

use super::allow::{self, Global};
use super::calls;
use super::opcode::{self, *};
use super::value::{Heap, NodeId, Storage, Value};
use crate::error::{quoted, Checked, Problem};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::rc::Rc;

/// Values (and memo entries) one pickle may create. A state dict needs a few dozen per
/// tensor; the cap keeps a hostile pickle (a billion empty lists) from taking all memory.
const MAX_VALUES: usize = 1 << 25;

/// One pickle, run.
pub(crate) struct Unpickled {
    pub(crate) root: Value,
    pub(crate) heap: Heap,
    /// Every storage its persistent ids named, by key.
    pub(crate) storages: BTreeMap<Rc<str>, Rc<Storage>>,
    /// Where the pickle ended: just past its STOP.
    pub(crate) end: usize,
}

/// Runs the pickle that starts at `bytes[start]`; byte positions in errors count from the
/// start of `bytes`.
pub(crate) fn unpickle(bytes: &[u8], start: usize) -> Checked<Unpickled> {
    let mut machine = Machine {
        bytes,
        pos: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        heap: Heap::default(),
        storages: BTreeMap::new(),
        created: 0,
    };
    let root = machine.run()?;
    Ok(Unpickled {
        root,
        heap: machine.heap,
        storages: machine.storages,
        end: machine.pos,
    })
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each open MARK, innermost last.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    heap: Heap,
    storages: BTreeMap<Rc<str>, Rc<Storage>>,
    created: usize,
}

impl<'a> Machine<'a> {
    fn run(&mut self) -> Checked<Value> {
        loop {
            let at = self.pos;
            let Some(&op) = self.bytes.get(at) else {
                return Err(Problem::Truncated(format!(
                    "the pickle ends at byte {at} without its STOP opcode"
                )));
            };
            self.pos += 1;
            if op == STOP {
                return self.pop(op, at);
            }
            self.step(op, at)?;
        }
    }

    fn step(&mut self, op: u8, at: usize) -> Checked<()> {
        match op {
            PROTO => {
                let [version] = self.array(op, at)?;
                if version > 5 {
                    return Err(malformed(op, at, format!("protocol {version} is unknown")));
                }
            }
            FRAME => {
                self.take(8, op, at)?;
            }
            MARK => self.marks.push(self.stack.len()),
            POP => {
                self.pop(op, at)?;
            }
            POP_MARK => {
                self.pop_mark(op, at)?;
            }
            DUP => {
                let top = self.top(op, at)?.clone();
                self.push(top)?;
            }
            BINPUT => {
                let [id] = self.array(op, at)?;
                self.memoize(id.into(), op, at)?;
            }
            LONG_BINPUT => {
                let id = u32::from_le_bytes(self.array(op, at)?);
                self.memoize(id, op, at)?;
            }
            MEMOIZE => {
                let id = u32::try_from(self.memo.len())
                    .map_err(|_| malformed(op, at, "the memo is full"))?;
                self.memoize(id, op, at)?;
            }
            BINGET => {
                let [id] = self.array(op, at)?;
                self.recall(id.into(), op, at)?;
            }
            LONG_BINGET => {
                let id = u32::from_le_bytes(self.array(op, at)?);
                self.recall(id, op, at)?;
            }
            NONE => self.push(Value::None)?,
            NEWTRUE => self.push(Value::Bool(true))?,
            NEWFALSE => self.push(Value::Bool(false))?,
            BININT => {
                let value = i32::from_le_bytes(self.array(op, at)?);
                self.push(Value::Int(value.into()))?;
            }
            BININT1 => {
                let [value] = self.array(op, at)?;
                self.push(Value::Int(value.into()))?;
            }
            BININT2 => {
                let value = u16::from_le_bytes(self.array(op, at)?);
                self.push(Value::Int(value.into()))?;
            }
            LONG1 | LONG4 => {
                let len = self.length(op, at)?;
                let bytes = self.take(len, op, at)?;
                self.push(integer(bytes))?;
            }
            BINFLOAT => {
                self.take(8, op, at)?;
                self.push(Value::Float)?;
            }
            SHORT_BINSTRING | BINSTRING | SHORT_BINUNICODE | BINUNICODE | BINUNICODE8 => {
                let len = self.length(op, at)?;
                let bytes = self.take(len, op, at)?;
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| malformed(op, at, "the string is not UTF-8"))?;
                self.push(Value::Str(text.into()))?;
            }
            SHORT_BINBYTES | BINBYTES | BINBYTES8 => {
                let len = self.length(op, at)?;
                self.take(len, op, at)?;
                self.push(Value::Bytes)?;
            }
            EMPTY_TUPLE => self.push_seq(Vec::new(), Value::Tuple)?,
            TUPLE => {
                let items = self.pop_mark(op, at)?;
                self.push_seq(items, Value::Tuple)?;
            }
            TUPLE1 | TUPLE2 | TUPLE3 => {
                let items = self.pop_n(usize::from(op - TUPLE1) + 1, op, at)?;
                self.push_seq(items, Value::Tuple)?;
            }
            EMPTY_LIST => self.push_seq(Vec::new(), Value::List)?,
            LIST => {
                let items = self.pop_mark(op, at)?;
                self.push_seq(items, Value::List)?;
            }
            APPEND => {
                let item = self.pop(op, at)?;
                let list = self.top_list(op, at)?;
                self.heap.seq_mut(list).push(item);
            }
            APPENDS => {
                let items = self.pop_mark(op, at)?;
                let list = self.top_list(op, at)?;
                self.heap.seq_mut(list).extend(items);
            }
            EMPTY_DICT => self.push_dict(Vec::new())?,
            DICT => {
                let items = self.pop_mark(op, at)?;
                let pairs = pairs(items, op, at)?;
                self.push_dict(pairs)?;
            }
            SETITEM => {
                let value = self.pop(op, at)?;
                let key = self.pop(op, at)?;
                let dict = self.top_dict(op, at)?;
                self.heap.dict_mut(dict).push((key, value));
            }
            SETITEMS => {
                let items = self.pop_mark(op, at)?;
                let pairs = pairs(items, op, at)?;
                let dict = self.top_dict(op, at)?;
                self.heap.dict_mut(dict).extend(pairs);
            }
            GLOBAL => {
                let module = self.line(op, at)?;
                let name = self.line(op, at)?;
                self.push(Value::Global(allow::resolve(module, name)?))?;
            }
            STACK_GLOBAL => {
                let name = self.pop_str(op, at)?;
                let module = self.pop_str(op, at)?;
                self.push(Value::Global(allow::resolve(&module, &name)?))?;
            }
            // INST names its class inline: refuse it by that name when it is not allowed.
            INST => {
                let module = self.line(op, at)?;
                let name = self.line(op, at)?;
                allow::resolve(module, name)?;
                return Err(unsupported(op, at));
            }
            REDUCE => {
                let args = self.pop(op, at)?;
                let callable = self.pop(op, at)?;
                let value = calls::call(&callable, &args, &mut self.heap)?;
                self.push(value)?;
            }
            // The state only sets attributes (a state dict's `_metadata`): nothing read here
            // depends on it.
            BUILD => {
                self.pop(op, at)?;
                self.top(op, at)?;
            }
            BINPERSID => {
                let pid = self.pop(op, at)?;
                let storage = self.persistent_load(&pid, op, at)?;
                self.push(Value::Storage(storage))?;
            }
            _ => return Err(unsupported(op, at)),
        }
        Ok(())
    }

    /// Resolves a persistent id `('storage', torch.<Type>Storage, key, location, numel)` (a
    /// sixth element, the view metadata of legacy files, must be None). Sizes come from the
    /// storage data itself, so `numel` is not needed.
    fn persistent_load(&mut self, pid: &Value, op: u8, at: usize) -> Checked<Rc<Storage>> {
        let Value::Tuple(id) = *pid else {
            return Err(malformed(
                op,
                at,
                format!("the persistent id is {}, not a tuple", pid.describe()),
            ));
        };
        let (key, dtype) = match self.heap.seq(id) {
            [Value::Str(tag), Value::Global(Global::StorageType(dtype)), Value::Str(key), _location, _numel, view @ ..]
                if &**tag == "storage" =>
            {
                match view {
                    [] | [Value::None] => (key.clone(), *dtype),
                    [_] => {
                        return Err(Problem::Unsupported(
                            "storage views (legacy files of early PyTorch releases) are not \
                             supported"
                                .into(),
                        ))
                    }
                    _ => return Err(malformed(op, at, "the persistent id is too long")),
                }
            }
            _ => {
                return Err(malformed(
                    op,
                    at,
                    "the persistent id is not ('storage', storage type, key, location, size)",
                ))
            }
        };
        let storage = self
            .storages
            .entry(key.clone())
            .or_insert_with(|| Rc::new(Storage { key, dtype }));
        if storage.dtype != dtype {
            return Err(malformed(
                op,
                at,
                format!(
                    "storage {} is read as both {:?} and {dtype:?}",
                    quoted(&storage.key),
                    storage.dtype
                ),
            ));
        }
        Ok(storage.clone())
    }

    fn take(&mut self, len: usize, op: u8, at: usize) -> Checked<&'a [u8]> {
        let bytes = self.bytes;
        let rest = bytes.get(self.pos..).unwrap_or_default();
        if len > rest.len() {
            return Err(Problem::Truncated(format!(
                "the pickle ends inside {} at byte {at}: it needs {len} more bytes, {} remain",
                op_name(op),
                rest.len()
            )));
        }
        self.pos += len;
        Ok(&rest[..len])
    }

    fn array<const N: usize>(&mut self, op: u8, at: usize) -> Checked<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, op, at)?);
        Ok(out)
    }

    /// The length prefix of a string, bytes or long opcode.
    fn length(&mut self, op: u8, at: usize) -> Checked<usize> {
        let len = match op {
            LONG1 | SHORT_BINSTRING | SHORT_BINUNICODE | SHORT_BINBYTES => {
                let [len] = self.array(op, at)?;
                u64::from(len)
            }
            LONG4 | BINSTRING => {
                let len = i32::from_le_bytes(self.array(op, at)?);
                u64::try_from(len).map_err(|_| malformed(op, at, "the length is negative"))?
            }
            BINUNICODE | BINBYTES => u32::from_le_bytes(self.array(op, at)?).into(),
            _ => u64::from_le_bytes(self.array(op, at)?),
        };
        // Longer than memory is longer than what remains: `take` says so.
        Ok(usize::try_from(len).unwrap_or(usize::MAX))
    }

    /// A newline-terminated argument of GLOBAL or INST.
    fn line(&mut self, op: u8, at: usize) -> Checked<&'a str> {
        let bytes = self.bytes;
        let rest = bytes.get(self.pos..).unwrap_or_default();
        let Some(len) = rest.iter().position(|&b| b == b'\n') else {
            return Err(Problem::Truncated(format!(
                "the pickle ends inside {} at byte {at}",
                op_name(op)
            )));
        };
        self.pos += len + 1;
        std::str::from_utf8(&rest[..len]).map_err(|_| malformed(op, at, "the name is not UTF-8"))
    }

    fn charge(&mut self) -> Checked<()> {
        self.created += 1;
        if self.created > MAX_VALUES {
            return Err(Problem::Unsupported(format!(
                "the pickle builds more than {MAX_VALUES} values, far more than a checkpoint \
                 needs; refusing it"
            )));
        }
        Ok(())
    }

    fn push(&mut self, value: Value) -> Checked<()> {
        self.charge()?;
        self.stack.push(value);
        Ok(())
    }

    fn push_seq(&mut self, items: Vec<Value>, kind: fn(NodeId) -> Value) -> Checked<()> {
        let id = self.heap.new_seq(items);
        self.push(kind(id))
    }

    fn push_dict(&mut self, pairs: Vec<(Value, Value)>) -> Checked<()> {
        let id = self.heap.new_dict(pairs);
        self.push(Value::Dict(id))
    }

    /// Stack height below which the innermost open MARK hides values.
    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, op: u8, at: usize) -> Checked<Value> {
        if self.stack.len() <= self.fence() {
            return Err(malformed(op, at, "the stack is empty"));
        }
        self.stack
            .pop()
            .ok_or_else(|| malformed(op, at, "the stack is empty"))
    }

    fn pop_n(&mut self, n: usize, op: u8, at: usize) -> Checked<Vec<Value>> {
        if self.stack.len() < self.fence() + n {
            return Err(malformed(op, at, format!("needs {n} values on the stack")));
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn pop_mark(&mut self, op: u8, at: usize) -> Checked<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| malformed(op, at, "there is no MARK"))?;
        Ok(self.stack.split_off(mark))
    }

    fn pop_str(&mut self, op: u8, at: usize) -> Checked<Rc<str>> {
        match self.pop(op, at)? {
            Value::Str(text) => Ok(text),
            other => Err(malformed(
                op,
                at,
                format!("expected a string, found {}", other.describe()),
            )),
        }
    }

    fn top(&self, op: u8, at: usize) -> Checked<&Value> {
        match self.stack.last() {
            Some(top) if self.stack.len() > self.fence() => Ok(top),
            _ => Err(malformed(op, at, "the stack is empty")),
        }
    }

    fn top_list(&self, op: u8, at: usize) -> Checked<NodeId> {
        match self.top(op, at)? {
            Value::List(id) => Ok(*id),
            other => Err(malformed(
                op,
                at,
                format!("appends to {}, not a list", other.describe()),
            )),
        }
    }

    fn top_dict(&self, op: u8, at: usize) -> Checked<NodeId> {
        match self.top(op, at)? {
            Value::Dict(id) => Ok(*id),
            other => Err(malformed(
                op,
                at,
                format!("sets items of {}, not a dict", other.describe()),
            )),
        }
    }

    fn memoize(&mut self, id: u32, op: u8, at: usize) -> Checked<()> {
        let value = self.top(op, at)?.clone();
        self.charge()?;
        self.memo.insert(id, value);
        Ok(())
    }

    fn recall(&mut self, id: u32, op: u8, at: usize) -> Checked<()> {
        let value = self
            .memo
            .get(&id)
            .cloned()
            .ok_or_else(|| malformed(op, at, format!("memo entry {id} was never stored")))?;
        self.push(value)
    }
}

/// Python's int from little-endian two's-complement bytes (LONG1, LONG4).
fn integer(bytes: &[u8]) -> Value {
    if bytes.len() > 8 {
        return Value::BigInt(bytes.into());
    }
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let mut wide = if negative { [0xff; 8] } else { [0; 8] };
    wide[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(wide))
}

fn pairs(items: Vec<Value>, op: u8, at: usize) -> Checked<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return Err(malformed(op, at, "a key has no value"));
    }
    let mut items = items.into_iter();
    let mut pairs = Vec::with_capacity(items.len() / 2);
    while let (Some(key), Some(value)) = (items.next(), items.next()) {
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn op_name(op: u8) -> String {
    match opcode::name(op) {
        Some(name) => name.to_string(),
        None => format!("opcode 0x{op:02x}"),
    }
}

fn malformed(op: u8, at: usize, detail: impl Display) -> Problem {
    Problem::Pickle(format!("{} at byte {at}: {detail}", op_name(op)))
}

fn unsupported(op: u8, at: usize) -> Problem {
    Problem::Pickle(match opcode::name(op) {
        Some(name) => format!(
            "unsupported opcode {name} (0x{op:02x}) at byte {at}; torch.save does not emit it"
        ),
        None => format!("unknown opcode 0x{op:02x} at byte {at}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(bytes: &[u8]) -> Checked<Unpickled> {
        unpickle(bytes, 0)
    }

    #[test]
    fn builds_containers_and_shares_memoized_ones() {
        // {'a': l, 'b': l} for l = [1]: the list is memoized empty, filled, then fetched
        // again, as Python writes a list referenced twice; both keys see the one list.
        let out =
            run(b"\x80\x02}q\x00(X\x01\x00\x00\x00a]q\x01K\x01aX\x01\x00\x00\x00bh\x01u.").unwrap();
        let Value::Dict(dict) = out.root else {
            panic!("expected a dict")
        };
        let (Some(Value::List(a)), Some(Value::List(b))) =
            (out.heap.get(dict, "a"), out.heap.get(dict, "b"))
        else {
            panic!("expected two lists")
        };
        assert_eq!(a, b);
        assert!(matches!(out.heap.seq(*a), [Value::Int(1)]));
    }

    #[test]
    fn deep_nesting_and_self_reference_cost_no_recursion() {
        let depth = 1_000_000;
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(EMPTY_LIST, depth));
        deep.extend(std::iter::repeat_n(APPEND, depth - 1));
        deep.push(STOP);
        assert!(run(&deep).is_ok());
        // l = []; l.append(l)
        assert!(run(b"\x80\x02]q\x00h\x00a.").is_ok());
    }

    #[test]
    fn names_the_opcodes_it_does_not_run() {
        assert_eq!(
            run(b"\x80\x02\x81.").err(),
            Some(Problem::Pickle(
                "unsupported opcode NEWOBJ (0x81) at byte 2; torch.save does not emit it".into()
            ))
        );
        assert_eq!(
            run(b"\x80\x02\xff.").err(),
            Some(Problem::Pickle("unknown opcode 0xff at byte 2".into()))
        );
        // INST carries its class inline, and is refused by it.
        assert_eq!(
            run(b"\x80\x02(ios\nsystem\n.").err(),
            Some(Problem::Refused("os.system".into()))
        );
    }

    #[test]
    fn refuses_a_global_before_calling_it() {
        // builtins.getattr by STACK_GLOBAL, never reaching the REDUCE after it.
        let pickle = b"\x80\x04\x8c\x08builtins\x8c\x07getattr\x93)R.";
        assert_eq!(
            run(pickle).err(),
            Some(Problem::Refused("builtins.getattr".into()))
        );
    }

    #[test]
    fn length_prefixes_past_the_end_are_truncation() {
        assert_eq!(
            run(b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff").err(),
            Some(Problem::Truncated(
                "the pickle ends inside BINUNICODE8 at byte 2: it needs 18446744073709551615 \
                 more bytes, 0 remain"
                    .into()
            ))
        );
        assert!(matches!(run(b"\x80\x02K"), Err(Problem::Truncated(_))));
        assert!(matches!(run(b""), Err(Problem::Truncated(_))));
    }

    #[test]
    fn stops_a_flood_of_values() {
        // Pushes and pops keep the stack empty; the budget counts every value made.
        let mut flood = Vec::with_capacity(2 * MAX_VALUES + 2);
        for _ in 0..=MAX_VALUES {
            flood.extend_from_slice(&[NONE, POP]);
        }
        assert!(matches!(run(&flood), Err(Problem::Unsupported(_))));
    }

    proptest! {
        /// Random runs of real opcodes and random bytes: an Ok or an error, never a panic,
        /// however the stack, marks and memo are left.
        #[test]
        fn machine_never_panics(ops in proptest::collection::vec(
            prop_oneof![
                3 => proptest::sample::select(vec![
                    MARK, POP, POP_MARK, DUP, BINPUT, MEMOIZE, BINGET, NONE, NEWTRUE, BININT1,
                    SHORT_BINUNICODE, EMPTY_TUPLE, TUPLE, TUPLE1, TUPLE2, TUPLE3, EMPTY_LIST,
                    LIST, APPEND, APPENDS, EMPTY_DICT, DICT, SETITEM, SETITEMS, GLOBAL,
                    STACK_GLOBAL, REDUCE, BUILD, BINPERSID, LONG1, FRAME, STOP,
                ]),
                1 => any::<u8>(),
            ],
            0..400,
        )) {
            let _ = run(&ops);
        }
    }
}
