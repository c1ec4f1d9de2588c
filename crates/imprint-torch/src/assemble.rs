//! Turning tensor descriptions and their storages' bytes into [`TorchTensor`]s, one storage
//! at a time, within a budget of elements.

use crate::error::{Checked, Problem};
use crate::pickle::{Storage, TensorSpec};
use crate::strided::{element_count, gather};
use crate::TorchTensor;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::rc::Rc;

/// How many f32 elements one file may turn into. Views can repeat their storage (an expanded
/// tensor is saved with stride 0, one tensor can be stored under many names), so without a
/// bound a small file could ask for any amount of memory. Twice the file's size in bytes, plus
/// 16 Mi elements for broadcast buffers, covers every checkpoint whose tensors do not overlap.
pub(crate) struct ElementBudget {
    limit: usize,
    spent: usize,
    file_len: usize,
}

impl ElementBudget {
    pub(crate) fn for_file(file_len: usize) -> Self {
        ElementBudget {
            limit: file_len.saturating_mul(2).saturating_add(1 << 24),
            spent: 0,
            file_len,
        }
    }

    fn spend(&mut self, name: &str, count: usize) -> Checked<()> {
        match self.spent.checked_add(count) {
            Some(total) if total <= self.limit => {
                self.spent = total;
                Ok(())
            }
            _ => Err(Problem::tensor(
                name,
                format!(
                    "its {count} elements would pass the limit of {} elements in all for a \
                     file of {} bytes",
                    self.limit, self.file_len
                ),
            )),
        }
    }
}

/// Reads each tensor of `named` out of its storage; `storage_bytes` returns a storage's raw
/// little-endian bytes, given the storage and the first tensor name that uses it (for
/// messages).
pub(crate) fn assemble<'a>(
    named: BTreeMap<String, Rc<TensorSpec>>,
    budget: &mut ElementBudget,
    mut storage_bytes: impl FnMut(&Storage, &str) -> Checked<Cow<'a, [u8]>>,
) -> Checked<Vec<TorchTensor>> {
    let mut by_storage: BTreeMap<&str, Vec<(&String, &Rc<TensorSpec>)>> = BTreeMap::new();
    for (name, spec) in &named {
        by_storage
            .entry(&spec.storage.key)
            .or_default()
            .push((name, spec));
    }
    let mut out = Vec::with_capacity(named.len());
    for users in by_storage.values() {
        let Some(&(first, spec)) = users.first() else {
            continue;
        };
        let storage = &spec.storage;
        let bytes = storage_bytes(storage, first)?;
        let size = storage.dtype.size();
        if !bytes.len().is_multiple_of(size) {
            return Err(Problem::tensor(
                first,
                format!(
                    "its storage holds {} bytes, not a whole number of {:?} elements",
                    bytes.len(),
                    storage.dtype
                ),
            ));
        }
        let values = storage.dtype.decode(&bytes);
        drop(bytes);
        for &(name, spec) in users {
            let count = element_count(&spec.shape)
                .ok_or_else(|| Problem::tensor(name, "its element count overflows"))?;
            budget.spend(name, count)?;
            let data = gather(spec, &values).map_err(|detail| Problem::tensor(name, detail))?;
            out.push(TorchTensor {
                name: name.clone(),
                shape: spec.shape.clone(),
                dtype: storage.dtype,
                data,
            });
        }
    }
    Ok(out)
}
