//! A storage server's disk in the simulator: the in-memory engine, plus what a durable engine
//! keeps with each write (its exactly-once record), and the server's own records. A durable run
//! keeps a server's disk when its process crashes and hands it to the process started again at
//! the same address, as `kv-server storage --data-dir` finds its directory; the other runs give
//! every process a new one, which says it keeps nothing (as `--in-memory`).
//!
//! It models `--fsync always`: a write is on the disk once its call returns, so a crash takes
//! back nothing that was answered (what the protocol must never do is answer before that). A
//! write whose call was cut off by the crash is either whole on the disk or absent: the engine
//! applies a write and its record in one step.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use kv_core::{
    Answer, EngineStats, Limits, MemoryStorage, Mutation, Output, Recording, Result, SessionRecord, Storage,
};

/// One kept answer: the write's fingerprint, tag and output, and its client's floor then.
type Kept = (u64, u16, u64, Output);

/// A simulated disk: see the module's documentation.
#[derive(Debug, Default)]
pub(crate) struct SimDisk {
    /// Whether it says it keeps its data on disk (a durable run's servers do): the shard master
    /// decides some things by it.
    durable: bool,
    values: MemoryStorage,
    /// The exactly-once records, by client and write number.
    records: Mutex<BTreeMap<(u64, u64), Kept>>,
}

impl SimDisk {
    pub(crate) fn new(durable: bool) -> Self {
        SimDisk { durable, ..Self::default() }
    }

    /// The engine that holds the values.
    pub(crate) fn values(&self) -> &MemoryStorage {
        &self.values
    }

    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u64, u64), Kept>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Storage for SimDisk {
    fn limits(&self) -> &Limits {
        self.values.limits()
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        self.values.get(key).await
    }

    async fn apply(&self, mutation: Mutation) -> Result<Output> {
        self.values.apply(mutation).await
    }

    async fn apply_recorded(&self, mutation: Mutation, record: Option<Recording>) -> Result<Output> {
        // The in-memory engine applies without yielding: the value and its record are written
        // in one step, as the durable engine's atomic batch does.
        let output = self.values.apply(mutation).await?;
        if let Some(Recording { id, fingerprint, tag, forget }) = record {
            let mut records = self.records();
            records.insert((id.client, id.seq), (fingerprint, tag, id.first_unanswered, output.clone()));
            for seq in forget {
                records.remove(&(id.client, seq));
            }
        }
        Ok(output)
    }

    async fn sessions(&self) -> Result<Vec<SessionRecord>> {
        let mut by_client: BTreeMap<u64, SessionRecord> = BTreeMap::new();
        for (&(client, seq), (fingerprint, tag, floor, output)) in self.records().iter() {
            let record = by_client.entry(client).or_insert_with(|| SessionRecord {
                client,
                floor: 0,
                answers: Vec::new(),
            });
            record.floor = record.floor.max(*floor);
            record.answers.push(Answer { seq, fingerprint: *fingerprint, output: output.clone(), tag: *tag });
        }
        Ok(by_client.into_values().collect())
    }

    async fn keep_sessions(&self, records: Vec<SessionRecord>) -> Result<()> {
        let mut kept = self.records();
        for record in records {
            for answer in record.answers {
                kept.insert(
                    (record.client, answer.seq),
                    (answer.fingerprint, answer.tag, record.floor, answer.output),
                );
            }
        }
        Ok(())
    }

    async fn forget_sessions(&self, clients: Vec<(u64, u64)>) -> Result<()> {
        let mut records = self.records();
        for (client, through) in clients {
            records.retain(|&(c, seq), _| c != client || seq > through);
        }
        Ok(())
    }

    async fn export(
        &self,
        select: &(dyn for<'k> Fn(&'k str) -> bool + Sync),
    ) -> Result<Vec<(String, String)>> {
        self.values.export(select).await
    }

    async fn import(&self, entries: Vec<(String, String)>) -> Result<()> {
        self.values.import(entries).await
    }

    async fn remove_where(&self, select: &(dyn for<'k> Fn(&'k str) -> bool + Sync)) -> Result<usize> {
        self.values.remove_where(select).await
    }

    async fn key_count(&self) -> Result<usize> {
        self.values.key_count().await
    }

    fn stats(&self) -> EngineStats {
        EngineStats { durable: self.durable, ..EngineStats::default() }
    }

    async fn state(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.values.state(name).await
    }

    async fn set_state(&self, name: &str, value: Option<Vec<u8>>) -> Result<()> {
        self.values.set_state(name, value).await
    }
}
