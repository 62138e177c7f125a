//! A shard master's state on disk (`kv-server shardmaster --data-dir DIR`): the
//! [`kv_shard::MasterStore`] of a shard master that must survive its restarts.
//!
//! Invariants:
//! - **Whole or not at all.** A save writes the whole state to `DIR/master-state.pb.tmp`, syncs
//!   it, renames it over `DIR/master-state.pb` and syncs the directory: a crash at any point
//!   leaves the last state saved, or this one, never a mix (a leftover `.tmp` is ignored and
//!   overwritten).
//! - **On disk before it is acted on.** A save returns once the rename is synced, and the shard
//!   master shows no one a change before its save returned.
//! - **Checked when read.** The file is the stored form in `kv_proto` (`kv.v1.MasterState`),
//!   read back with the same checks as a peer's message: a damaged or foreign file is an error
//!   naming it, and the shard master does not start, rather than start from a state it cannot
//!   trust, or from none (a shard master that forgot its cluster would hand out a second one).
//!
//! Not yet: a lock against two shard masters on one directory, and the replicated log of a
//! shard master group (the state then lives in the Raft log and its snapshots).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use kv_proto::convert::{decode_master_state, encode_master_state};
use kv_shard::{Error, MasterState, MasterStore};

/// The file a shard master's state is kept in, under its data directory.
const STATE_FILE: &str = "master-state.pb";

/// A shard master's state in one file under a directory.
#[derive(Debug, Clone)]
pub struct FileMasterStore {
    dir: PathBuf,
}

impl FileMasterStore {
    /// The store under `dir`, created if missing.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(FileMasterStore { dir: dir.to_owned() })
    }

    /// The file the state is kept in.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let temporary = self.dir.join(format!("{STATE_FILE}.tmp"));
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temporary, self.path())?;
        // The rename is durable once the directory is.
        File::open(&self.dir)?.sync_all()
    }
}

fn blocking_failed(err: tokio::task::JoinError) -> Error {
    Error::Internal(format!("the disk task failed: {err}"))
}

#[async_trait]
impl MasterStore for FileMasterStore {
    async fn load(&self) -> Result<Option<MasterState>, Error> {
        let path = self.path();
        let read = tokio::task::spawn_blocking({
            let path = path.clone();
            move || fs::read(path)
        });
        let bytes = match read.await.map_err(blocking_failed)? {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(Error::Internal(format!("cannot read {}: {err}", path.display()))),
        };
        decode_master_state(&bytes)
            .map(Some)
            .map_err(|err| Error::InvalidConfig(format!("{}: {err}", path.display())))
    }

    async fn save(&self, state: &MasterState) -> Result<(), Error> {
        let bytes = encode_master_state(state);
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.write(&bytes))
            .await
            .map_err(blocking_failed)?
            .map_err(|err| Error::Internal(format!("cannot write {}: {err}", self.path().display())))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kv_shard::Config;

    use super::*;

    #[tokio::test]
    async fn the_last_state_saved_is_read_back_and_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = FileMasterStore::open(&dir.path().join("master")).expect("a store");
        assert_eq!(store.load().await, Ok(None), "nothing saved yet");
        let mut state = MasterState::new(Config::new());
        store.save(&state).await.expect("saved");
        let next = state.current().join("10.0.0.1:7000").expect("a join");
        state.history.push(Arc::new(next));
        store.save(&state).await.expect("saved");
        let reopened = FileMasterStore::open(&dir.path().join("master")).expect("a store");
        assert_eq!(reopened.load().await, Ok(Some(state)));

        fs::write(reopened.path(), b"not a master state").expect("written");
        let err = reopened.load().await.expect_err("a damaged file");
        assert!(err.to_string().contains("master-state.pb"), "{err}");
    }
}
