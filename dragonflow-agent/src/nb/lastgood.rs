//! The last good version of every record that is invalid now, kept across restarts in
//! `<state-dir>/<chassis>.lastgood.json`, so that a restart alone never changes a verdict:
//! a restarted agent would otherwise know only the invalid value, drop the record, and
//! (for a port) its addresses would leave the remote groups it is a member of.
//!
//! Small by design: only records that are invalid *and* have a last good version in force
//! are kept (an operator fixes those), each as key, etcd create_revision (a record deleted
//! and re-created while the agent was down is another record: its old version is not
//! used) and the value in force, re-validated when it is used. Written aside, synced and
//! renamed, only when that set changes. A file that cannot be read or parsed is reported
//! once and the agent starts without it: what it would have restored is then held as it
//! is in the pinned maps where it can be (`NbCache::held_taps`).

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::report::Chain;

/// Format version of the file; another version is ignored like a corrupt file.
const VERSION: u32 = 1;

/// One kept version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// etcd create_revision of the record (0 when unknown).
    pub create_revision: i64,
    /// The version in force, as JSON.
    pub value: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    records: BTreeMap<String, Saved>,
}

#[derive(Debug, thiserror::Error)]
pub enum LastGoodError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a last-good file of this agent (format version {VERSION})")]
    Malformed {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {path} (--state-dir)")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The kept versions, by NB key; persisted when `path` is set (tests run without).
#[derive(Debug, Default)]
pub struct LastGood {
    path: Option<PathBuf>,
    records: BTreeMap<String, Saved>,
    dirty: bool,
    /// The last write failed (reported once, not at every retry).
    failing: bool,
}

impl LastGood {
    /// `<state_dir>/<chassis>.lastgood.json` and what it holds. An unreadable or corrupt
    /// file is reported and ignored (it is rewritten at the next change): never a reason
    /// not to start.
    pub fn open(state_dir: &Path, chassis: &str) -> Self {
        let path = state_dir.join(format!("{chassis}.lastgood.json"));
        let records = match read(&path) {
            Ok(r) => r,
            Err(e) => {
                warn!(
                    "{}; starting without the last good versions it kept (invalid records \
                     with no version in force are held as the pinned maps have them)",
                    Chain(&e)
                );
                BTreeMap::new()
            }
        };
        LastGood {
            path: Some(path),
            records,
            ..Default::default()
        }
    }

    pub fn get(&self, key: &str) -> Option<&Saved> {
        self.records.get(key)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Keeps `saved` as `key`'s last good version.
    pub fn keep(&mut self, key: &str, saved: Saved) {
        if self.records.get(key) != Some(&saved) {
            self.records.insert(key.to_string(), saved);
            self.dirty = true;
        }
    }

    /// Forgets `key` (valid again, deleted, or nothing of it in force).
    pub fn forget(&mut self, key: &str) {
        self.dirty |= self.records.remove(key).is_some();
    }

    /// Forgets every key `keep` refuses.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let before = self.records.len();
        self.records.retain(|k, _| keep(k));
        self.dirty |= self.records.len() != before;
    }

    /// Writes the file if the set changed since the last write. A failure is reported once
    /// and retried at every later call until a write succeeds; the versions stay in force
    /// in this process regardless.
    pub fn flush(&mut self) {
        if !self.dirty {
            return;
        }
        let Some(path) = &self.path else {
            self.dirty = false;
            return;
        };
        match write(path, &self.records) {
            Ok(()) => {
                if self.failing {
                    info!("{} written again", path.display());
                }
                self.dirty = false;
                self.failing = false;
            }
            Err(e) if !self.failing => {
                warn!(
                    "{}; a restart now would not know the last good versions of {} invalid \
                     records (retrying at every NB change)",
                    Chain(&e),
                    self.records.len()
                );
                self.failing = true;
            }
            Err(_) => {}
        }
    }
}

fn read(path: &Path) -> Result<BTreeMap<String, Saved>, LastGoodError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(LastGoodError::Read {
                path: path.into(),
                source,
            });
        }
    };
    let malformed = |source| LastGoodError::Malformed {
        path: path.into(),
        source,
    };
    let file: File = serde_json::from_slice(&bytes).map_err(malformed)?;
    if file.version != VERSION {
        return Err(malformed(serde::de::Error::custom(format!(
            "format version {}",
            file.version
        ))));
    }
    Ok(file.records)
}

/// Written aside, synced, renamed over the old file, and the directory synced: a crash
/// leaves the old set or the new one, never half of one.
fn write(path: &Path, records: &BTreeMap<String, Saved>) -> Result<(), LastGoodError> {
    let err = |source| LastGoodError::Write {
        path: path.into(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let body = serde_json::to_vec(&File {
        version: VERSION,
        records: records.clone(),
    })
    .expect("kept versions serialise");
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&body).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("df-lastgood-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_writes_only_on_change() {
        let d = dir("rt");
        let mut lg = LastGood::open(&d, "hv1");
        assert!(lg.is_empty());
        let saved = Saved {
            create_revision: 7,
            value: serde_json::json!({"id": "p1"}),
        };
        lg.keep("/dragonflow/lport/p1", saved.clone());
        lg.flush();
        let file = d.join("hv1.lastgood.json");
        let written = std::fs::metadata(&file).unwrap().modified().unwrap();
        // Nothing changed: no write (the file is removed to see it is not re-created).
        std::fs::remove_file(&file).unwrap();
        lg.keep("/dragonflow/lport/p1", saved.clone());
        lg.flush();
        assert!(!file.exists());
        lg.keep("/dragonflow/lport/p2", saved.clone());
        lg.flush();
        let again = LastGood::open(&d, "hv1");
        assert_eq!(again.get("/dragonflow/lport/p1"), Some(&saved));
        assert_eq!(again.len(), 2);
        assert!(std::fs::metadata(&file).unwrap().modified().unwrap() >= written);
        lg.forget("/dragonflow/lport/p1");
        lg.retain(|k| k != "/dragonflow/lport/p2");
        lg.flush();
        assert!(LastGood::open(&d, "hv1").is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_ignored_and_replaced() {
        let d = dir("corrupt");
        std::fs::create_dir_all(&d).unwrap();
        let file = d.join("hv1.lastgood.json");
        for junk in [&b"{not json"[..], br#"{"version":99,"records":{}}"#] {
            std::fs::write(&file, junk).unwrap();
            let mut lg = LastGood::open(&d, "hv1");
            assert!(lg.is_empty());
            lg.keep(
                "k",
                Saved {
                    create_revision: 1,
                    value: serde_json::Value::Null,
                },
            );
            lg.flush();
            assert_eq!(LastGood::open(&d, "hv1").len(), 1);
        }
        assert!(read(&d.join("hv1.lastgood.json")).is_ok());
        std::fs::write(&file, b"{").unwrap();
        let e = read(&file).unwrap_err();
        assert!(e.to_string().contains("hv1.lastgood.json"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_write_is_retried_until_it_succeeds() {
        let d = dir("unwritable");
        // The state dir is a file: nothing can be written under it.
        std::fs::write(&d, b"not a directory").unwrap();
        let mut lg = LastGood::open(&d, "hv1");
        let saved = Saved {
            create_revision: 1,
            value: serde_json::Value::Null,
        };
        lg.keep("k", saved);
        lg.flush();
        assert!(lg.failing && lg.dirty);
        lg.flush();
        assert!(lg.failing, "still failing, reported once");
        std::fs::remove_file(&d).unwrap();
        lg.flush();
        assert!(!lg.failing && !lg.dirty);
        assert_eq!(LastGood::open(&d, "hv1").len(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
