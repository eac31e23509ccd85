//! This agent's instance id: who owns the chassis record in etcd.
//!
//! Two agents must never share a chassis name: each would overwrite the other's record and
//! the first lease to expire would delete it. The record therefore names the agent
//! instance that wrote it, and an agent only takes a live record that names its own id.
//!
//! The id is persisted in `<state-dir>/<chassis>.instance` so that a restarted agent —
//! also after `kill -9`, while its previous lease is still alive for up to the TTL — can
//! tell "my previous incarnation" (same host, same state dir: take the record over) from
//! "another live agent" (any other id: refuse to start). Deleting the file makes the next
//! start wait for the old record to expire, nothing worse.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("cannot read the instance id file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the instance id file {path} (--state-dir)")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the instance id file {0} does not hold a 32-digit hex id")]
    Malformed(PathBuf),
    #[error("cannot read random bytes for a new instance id")]
    Random(#[source] std::io::Error),
}

/// The id in `<state_dir>/<chassis>.instance`, created (random, 128 bits) if absent.
pub fn load_or_create(state_dir: &Path, chassis: &str) -> Result<String, InstanceError> {
    let path = state_dir.join(format!("{chassis}.instance"));
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim();
            if id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()) {
                return Ok(id.to_ascii_lowercase());
            }
            Err(InstanceError::Malformed(path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 16];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut bytes))
                .map_err(InstanceError::Random)?;
            let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let write = |source| InstanceError::Write {
                path: path.clone(),
                source,
            };
            std::fs::create_dir_all(state_dir).map_err(write)?;
            // Written aside and renamed: a crash never leaves a half-written id.
            let tmp = path.with_extension("instance.tmp");
            std::fs::write(&tmp, format!("{id}\n")).map_err(write)?;
            std::fs::rename(&tmp, &path).map_err(write)?;
            Ok(id)
        }
        Err(source) => Err(InstanceError::Read { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persisted_and_reused() {
        let dir = std::env::temp_dir().join(format!("df-instance-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = load_or_create(&dir, "hv1").unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(load_or_create(&dir, "hv1").unwrap(), a);
        assert_ne!(load_or_create(&dir, "hv2").unwrap(), a);
        std::fs::write(dir.join("hv3.instance"), "nope").unwrap();
        let e = load_or_create(&dir, "hv3").unwrap_err();
        assert!(e.to_string().contains("hv3.instance"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
