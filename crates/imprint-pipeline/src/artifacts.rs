//! The one home of what a job leaves behind in its output folder and of what it reads back from
//! there to resume. A job runs on one process or on the replicas of a data-parallel run; either
//! way two decisions are made here and nowhere else: only replica 0 writes
//! ([`Artifacts::write`]), and whatever a job reads back to continue (checkpoints, finished
//! pre-trainings, the records of a comparison) replica 0 reads and hands to every replica
//! ([`Artifacts::read_back`]), so that all continue from the same point whether or not they see
//! the same files.

use crate::{PipelineError, Result};
use imprint_collective::{single, Replicas};
use imprint_nn::NamedTensor;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A job's output folder as this process sees it.
#[derive(Clone)]
pub struct Artifacts {
    dir: PathBuf,
    replicas: Replicas,
}

impl Artifacts {
    /// The folder `dir` (already prepared, see [`crate::prepare_output_dir`], on replica 0) of a
    /// job run by `replicas`.
    pub fn new(dir: impl Into<PathBuf>, replicas: Replicas) -> Self {
        Self {
            dir: dir.into(),
            replicas,
        }
    }

    /// The folder `dir` of a job run by this process alone.
    pub fn alone(dir: impl Into<PathBuf>) -> Self {
        Self::new(dir, single())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `dir/name`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.join(name)
    }

    /// The artifacts of the sub-folder `name` (a seed's pre-training, a run of a comparison).
    pub fn sub(&self, name: impl AsRef<Path>) -> Artifacts {
        Self::new(self.join(name), self.replicas.clone())
    }

    /// The replicas the job runs on.
    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    /// Whether this process writes the outputs: replica 0 does, the others compute alike and
    /// write nothing.
    pub fn writes(&self) -> bool {
        self.replicas.rank() == 0
    }

    /// Runs `write` (which writes into the folder) on the process that writes; nothing on the
    /// others.
    pub fn write(&self, write: impl FnOnce() -> Result<()>) -> Result<()> {
        if self.writes() {
            write()
        } else {
            Ok(())
        }
    }

    /// What replica 0's `read` gives, on every replica: replica 0 reads the folder, the others
    /// receive its result. An error ends the job on replica 0 (which ends the others).
    pub fn read_back<T: Serialize + DeserializeOwned>(
        &self,
        read: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let (_, value) = self.read_back_with_tensors(|| Ok((Vec::new(), read()?)))?;
        Ok(value)
    }

    /// [`Artifacts::read_back`] for a value that comes with tensors (a checkpoint's), which
    /// cross in their f32 bits.
    pub fn read_back_with_tensors<T: Serialize + DeserializeOwned>(
        &self,
        read: impl FnOnce() -> Result<(Vec<NamedTensor>, T)>,
    ) -> Result<(Vec<NamedTensor>, T)> {
        if self.replicas.size() == 1 {
            return read();
        }
        let mut bytes = match self.replicas.rank() {
            0 => {
                let (tensors, value) = read()?;
                encode(&tensors, &value)?
            }
            _ => Vec::new(),
        };
        self.replicas.broadcast(&mut bytes);
        decode(&bytes)
    }
}

/// What [`encode`] writes first: the value and each tensor's name and shape; the tensors' values
/// follow in order.
#[derive(Serialize, Deserialize)]
struct Header<T> {
    value: T,
    tensors: Vec<(String, Vec<usize>)>,
}

/// `[header length: u64 LE][header JSON][every tensor's values, f32 LE]`.
fn encode<T: Serialize>(tensors: &[NamedTensor], value: &T) -> Result<Vec<u8>> {
    let header = Header {
        value,
        tensors: tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect(),
    };
    let header = serde_json::to_vec(&header).map_err(|e| broken(e.to_string()))?;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    for t in tensors {
        bytes.extend(t.data.iter().flat_map(|v| v.to_le_bytes()));
    }
    Ok(bytes)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(Vec<NamedTensor>, T)> {
    let (len, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| broken("no header".into()))?;
    let len = u64::from_le_bytes(*len) as usize;
    let (header, mut data) = rest
        .split_at_checked(len)
        .ok_or_else(|| broken("a short header".into()))?;
    let header: Header<T> = serde_json::from_slice(header).map_err(|e| broken(e.to_string()))?;
    let mut tensors = Vec::with_capacity(header.tensors.len());
    for (name, shape) in header.tensors {
        let n = shape.iter().product::<usize>() * 4;
        let (values, rest) = data
            .split_at_checked(n)
            .ok_or_else(|| broken(format!("tensor `{name}` cut short")))?;
        data = rest;
        let data = values
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        tensors.push(NamedTensor { name, shape, data });
    }
    Ok((tensors, header.value))
}

/// Replica 0's bytes did not decode: a bug, not a user's error.
fn broken(message: String) -> PipelineError {
    PipelineError::Output(format!(
        "what replica 0 read back did not reach this replica intact: {message}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imprint_collective::local_group;
    use std::rc::Rc;

    #[test]
    fn tensors_and_value_cross_bit_for_bit() {
        let tensors = vec![
            NamedTensor {
                name: "a.weight".into(),
                shape: vec![2, 2],
                data: vec![1.0, -0.0, f32::MIN_POSITIVE, 0.1],
            },
            NamedTensor {
                name: "b".into(),
                shape: vec![0],
                data: vec![],
            },
        ];
        let value = (3usize, "state".to_string());
        let bytes = encode(&tensors, &value).unwrap();
        let (back, v): (_, (usize, String)) = decode(&bytes).unwrap();
        assert_eq!(v, value);
        assert_eq!(back, tensors);
        assert!(back[0].data[1].is_sign_negative());
        assert!(decode::<(usize, String)>(&bytes[..bytes.len() - 1]).is_err());
    }

    /// Only replica 0 writes and reads; the others get what it read.
    #[test]
    fn replica_zero_writes_and_reads_for_all() {
        let results: Vec<(bool, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = local_group(2)
                .into_iter()
                .map(|member| {
                    s.spawn(move || {
                        let rank = imprint_collective::Collective::rank(&member);
                        let out = Artifacts::new("unused", Rc::new(member));
                        let mut wrote = false;
                        out.write(|| {
                            wrote = true;
                            Ok(())
                        })
                        .unwrap();
                        let read = out.read_back(|| Ok(format!("read by {rank}"))).unwrap();
                        (wrote, read)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            results,
            [(true, "read by 0".into()), (false, "read by 0".into())]
        );
    }
}
