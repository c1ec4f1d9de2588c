//! How much decoded image data may stay in memory, and where caches live.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The default of `data.memory_budget_mb`.
pub const DEFAULT_MEMORY_BUDGET_MB: u64 = 1024;

/// Where loading may keep what it computed once, and how much memory the images may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Storage {
    /// Decoded images beyond this many bytes are not held in memory: an uncompressed idx file
    /// is read from disk image by image, other sources through a cache file of their 8-bit
    /// pixels; images being decoded at once take at most about this much too.
    pub memory_budget: u64,
    /// Caches of file digests and of decoded images; `None`: no caches (every load hashes
    /// and decodes again, and every source is held in memory).
    pub cache_dir: Option<PathBuf>,
    /// What loading did that the user should hear of (an image cache rebuilt because its bytes
    /// changed), for the caller to show.
    pub notices: Notices,
}

/// Lines for the user collected while loading, shared by a [`Storage`]'s clones; a library
/// prints nothing, its caller shows them ([`Notices::take`]).
#[derive(Clone, Debug, Default)]
pub struct Notices(Arc<Mutex<Vec<String>>>);

impl Notices {
    pub fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    /// The lines collected since the last call, in order.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Where notices go is no part of what a storage is.
impl PartialEq for Notices {
    fn eq(&self, _: &Notices) -> bool {
        true
    }
}

impl Eq for Notices {}

impl Default for Storage {
    /// The default budget and no caches: what a library caller gets unless it chooses.
    fn default() -> Self {
        Storage {
            memory_budget: DEFAULT_MEMORY_BUDGET_MB << 20,
            cache_dir: None,
            notices: Notices::default(),
        }
    }
}

impl Storage {
    /// The default budget and the default cache folder (see [`default_cache_dir`]).
    pub fn standard() -> Storage {
        Storage {
            cache_dir: default_cache_dir(),
            ..Storage::default()
        }
    }

    /// A budget of `mb` MiB.
    pub fn with_budget_mb(self, mb: u64) -> Storage {
        Storage {
            memory_budget: mb.saturating_mul(1 << 20),
            ..self
        }
    }
}

/// `$IMPRINT_CACHE_DIR`, else `$XDG_CACHE_HOME/imprint`, else `$HOME/.cache/imprint`: a folder
/// of the user's, never one beside the data (which may be read-only or shared).
pub fn default_cache_dir() -> Option<PathBuf> {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = set("IMPRINT_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = set("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("imprint"));
    }
    set("HOME").map(|home| PathBuf::from(home).join(".cache").join("imprint"))
}
