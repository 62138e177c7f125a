//! After the faults: waiting for a replicated cluster to be healthy again, checking that its
//! replicas converged, and reading every key back.
//!
//! - *Healthy*: every running server a member of the shard master's map, and every member at
//!   the map's epoch with nothing moving (no slot incoming or outgoing) and no copy catching up,
//!   by what each server reports (`kv.v1.Node/Status`).
//! - *Converged*: every replica of every key's slot holds the same value, read at each replica
//!   directly (a client pinned to that server, one attempt per read), polled until they agree or
//!   the bound passes. Strong reads at a secondary are answered from its own copy once no write
//!   is in flight, so after the writes stop this compares the copies themselves.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kv_client::{Client, ReadFrom, ShardMaster, server_status};

use crate::harness::history::{Input, Outcome, Output};
use crate::harness::recorder::Recorder;

/// How long one status call or direct read may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Waits until the cluster is healthy (every server of `servers`, by client address, a member,
/// all at the map's epoch, nothing moving or catching up), at most `bound`. Returns how long it
/// took, or what was still wrong.
pub(crate) async fn wait_healthy(
    master: &str,
    servers: &[String],
    bound: Duration,
) -> Result<Duration, String> {
    let began = Instant::now();
    loop {
        let why = match unhealthy(master, servers).await {
            None => return Ok(began.elapsed()),
            Some(why) => why,
        };
        if began.elapsed() >= bound {
            return Err(format!("not healthy {:.0} s after the heal: {why}", bound.as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What keeps the cluster from being healthy, if anything.
async fn unhealthy(master: &str, servers: &[String]) -> Option<String> {
    let map = match tokio::time::timeout(CALL_TIMEOUT, async {
        ShardMaster::connect(master).await?.config().await
    })
    .await
    {
        Ok(Ok(map)) => map,
        Ok(Err(err)) => return Some(format!("the shard master: {err}")),
        Err(_) => return Some("the shard master did not answer".to_owned()),
    };
    if let Some(missing) = servers.iter().find(|s| map.id_of(s).is_none()) {
        return Some(format!("{missing} is not a member (epoch {})", map.epoch()));
    }
    for (_, member) in map.members() {
        let status = match server_status(member, CALL_TIMEOUT).await {
            Ok(status) => status,
            Err(err) => return Some(format!("{member}: {err}")),
        };
        if status.epoch != map.epoch() {
            return Some(format!("{member} is at epoch {}, the map at {}", status.epoch, map.epoch()));
        }
        if status.incoming_slots + status.outgoing_slots + status.syncing_slots > 0 {
            return Some(format!(
                "{member}: {} slots incoming, {} outgoing, {} copies catching up",
                status.incoming_slots, status.outgoing_slots, status.syncing_slots
            ));
        }
    }
    None
}

/// Reads every key at every replica of its slot until they agree, at most `bound`. Returns
/// how long it took, or the keys whose replicas still differ (the first few, with what each
/// replica holds).
pub(super) async fn converge(master: &str, keys: &[String], bound: Duration) -> Result<Duration, String> {
    let began = Instant::now();
    let mut direct: HashMap<String, Client> = HashMap::new();
    loop {
        let mut differ = Vec::new();
        match ShardMaster::connect(master).await.map_err(|e| e.to_string()) {
            Ok(shardmaster) => match shardmaster.config().await {
                Ok(map) => {
                    for key in keys.iter() {
                        if map.replicas(key).is_empty() {
                            differ.push(format!("{key}: no replica in the map (epoch {})", map.epoch()));
                            continue;
                        }
                        let mut values = BTreeMap::new();
                        for (_, server) in map.replicas(key) {
                            let value = read_at(&mut direct, server, key).await;
                            values.insert(server.to_owned(), value);
                        }
                        let mut distinct: Vec<&Result<Option<String>, String>> = values.values().collect();
                        distinct.dedup();
                        if distinct.len() > 1 || distinct.iter().any(|v| v.is_err()) {
                            differ.push(format!("{key}: {values:?}"));
                        }
                    }
                }
                Err(err) => differ.push(format!("the shard master's map: {err}")),
            },
            Err(err) => differ.push(format!("the shard master: {err}")),
        }
        if differ.is_empty() {
            return Ok(began.elapsed());
        }
        if began.elapsed() >= bound {
            differ.truncate(3);
            return Err(format!(
                "replicas differ {:.0} s after the heal: {}",
                bound.as_secs_f64(),
                differ.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `key` as the server at `server` holds it (one attempt).
async fn read_at(
    direct: &mut HashMap<String, Client>,
    server: &str,
    key: &str,
) -> Result<Option<String>, String> {
    if !direct.contains_key(server) {
        let client = Client::builder(server)
            .attempts(1)
            .timeout(CALL_TIMEOUT)
            .connect_timeout(CALL_TIMEOUT)
            .connect()
            .await
            .map_err(|err| format!("cannot connect: {err}"))?;
        direct.insert(server.to_owned(), client);
    }
    let client = direct.get(server).context("no client").map_err(|err| err.to_string())?;
    client.get(key).await.map_err(|err| err.to_string())
}

/// Reads every key once more at its primary, recorded as process `process` (so the checker
/// holds the final state to the history), retrying for at most `bound`. Returns the values.
pub(super) async fn final_reads(
    recorder: &Recorder,
    master: &str,
    keys: &[String],
    process: u64,
    bound: Duration,
) -> Result<BTreeMap<String, Option<String>>> {
    let deadline = Instant::now() + bound;
    let client = Client::cluster_builder(master)
        .read_from(ReadFrom::Primary)
        .timeout(CALL_TIMEOUT)
        .connect_timeout(CALL_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("cannot connect to the cluster of {master}"))?;
    let reader = recorder.client(process, client);
    let mut finals = BTreeMap::new();
    for key in keys {
        loop {
            if let Outcome::Ok(Output::Value(value)) = reader.run(key, Input::Get).await {
                finals.insert(key.clone(), value);
                break;
            }
            if Instant::now() >= deadline {
                bail!("could not read {key} back within {:.0} s of the heal", bound.as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(finals)
}
