//! Which slots a storage server serves: the slot table every request passes, behind the lock
//! that makes installs and hand-offs lose nothing.
//!
//! Every request is admitted under a read lock, checked against the slot table, and keeps the
//! lock until the operation is done. An install takes the write lock: it waits for the
//! operations already admitted, switches, and from then on requests for the slots it lost are
//! refused. So by the time a lost slot is exported, every write that was applied to it
//! (answered or not) is in the engine and in the sessions (the protocol is in `kv_shard`'s
//! docs).
//!
//! A server that has never installed a configuration is *standalone*: it serves every key. The
//! first configuration installed makes it a cluster member for good; a server started to join a
//! cluster serves nothing until then.

use kv_core::Error;
use kv_shard::{Ownership, Refused, Slot, slot_of};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The routing state behind the lock every request reads.
#[derive(Debug)]
pub(crate) struct Table {
    /// No configuration installed yet: every key is served.
    pub(crate) standalone: bool,
    pub(crate) ownership: Ownership,
}

/// The slot table and its lock.
#[derive(Debug)]
pub(crate) struct Routing {
    /// Started to join a cluster: until its first install it serves nothing (a client with an
    /// old map must not leave a write on a server that is not a member).
    joining: bool,
    table: RwLock<Table>,
}

impl Routing {
    /// The table of a server at `me` that installed nothing: standalone, or `joining`.
    pub(crate) fn new(me: String, joining: bool) -> Self {
        Routing { joining, table: RwLock::new(Table { standalone: true, ownership: Ownership::new(me) }) }
    }

    /// Admits a request for `key`: the returned guard must be held until the operation is done.
    pub(crate) async fn admit(&self, key: &str) -> Result<(RwLockReadGuard<'_, Table>, Slot), Error> {
        let slot = slot_of(key);
        let table = self.table.read().await;
        if table.standalone && self.joining {
            return Err(Error::Replication("this server has not joined its cluster yet".to_owned()));
        }
        if !table.standalone {
            table.ownership.check(slot).map_err(|refused| match refused {
                Refused::WrongShard { epoch, owner } => Error::WrongShard { slot, epoch, owner },
                Refused::Moving { epoch } => Error::Moving { slot, epoch },
            })?;
        }
        Ok((table, slot))
    }

    /// The table, to read.
    pub(crate) async fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().await
    }

    /// The table, to change: waits for every request admitted so far to finish.
    pub(crate) async fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.table.write().await
    }
}
