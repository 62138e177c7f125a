//! The course assignment's sharded flows, through cluster clients, each on a fresh cluster.
//!
//! Membership changes are made as an operator would: a server leaves when it is stopped
//! (SIGTERM: it asks the shard master to hand its data to the others, then exits), and a new one
//! joins when it starts. The "oldest" server is the member that joined first.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use kv_client::{Client, server_status};
use kv_shard::Config;
use tokio::runtime::Runtime;

use super::{
    Options, STOP_TIMEOUT, client_runtime, cluster_client, current_config, keep_files_if_asked, master_addr,
    node_by_addr, start_cluster, stop_all_at_once,
};
use crate::harness::cluster::Cluster;
use crate::load::checks::{self, CheckOutcome, Keys, verdict};

/// The assignment's MUDA flow appends this to key 81 at every step.
const MUDA: &str = "MUDA ";
const MUDA_KEY: &str = "81";
/// Values written before the leaves of the 5-server flow, read back after each.
const KEPT_VALUES: usize = 100;

/// Runs every flow; a flow's failed expectation is a failed check, while a cluster that cannot
/// even start is an error.
pub(super) fn run(options: &Options) -> Result<Vec<CheckOutcome>> {
    let rt = client_runtime()?;
    let mut out = Vec::new();
    for servers in [2, 4, 8] {
        out.extend(sequence_parallel_all_stop(options, &rt, servers)?);
    }
    out.extend(leaves_one_by_one(options, &rt)?);
    out.extend(muda(options, &rt)?);
    Ok(out)
}

/// The verdict of a check run outside the runtime (it blocks on processes), in the manner of
/// [`checks::verdict`]: `Ok(note)` passes, with the note as its detail.
fn outcome(name: impl Into<String>, started: Instant, result: Result<String>) -> CheckOutcome {
    let passed = result.is_ok();
    let detail = match result {
        Ok(note) if note.is_empty() => "ok".to_owned(),
        Ok(note) => format!("ok: {note}"),
        Err(err) => format!("{err:#}"),
    };
    CheckOutcome { name: name.into(), passed, detail, seconds: started.elapsed().as_secs_f64() }
}

/// The sequence and parallel tests on `servers` servers, then every server stopped at once.
fn sequence_parallel_all_stop(options: &Options, rt: &Runtime, servers: usize) -> Result<Vec<CheckOutcome>> {
    let mut cluster = start_cluster(options, servers)?;
    let master = master_addr(&cluster)?;
    let keys = Keys::new(format!("s{servers}-"));
    let mut out = rt.block_on(async {
        let one = cluster_client(&master).await?;
        let two = vec![cluster_client(&master).await?, cluster_client(&master).await?];
        Ok::<_, anyhow::Error>(vec![
            verdict(format!("{servers} servers: sequence (1 client)"), checks::sequence(&one, &keys)).await,
            verdict(format!("{servers} servers: parallel (2 clients)"), checks::parallel(&two, &keys)).await,
        ])
    })?;
    let started = Instant::now();
    let result = all_stop_at_once(rt, &mut cluster, &master, &keys.key(33));
    let name = format!("{servers} servers: all stop at once; all exit 0, the last stays a member");
    out.push(outcome(name, started, result));
    keep_files_if_asked(&mut cluster, out.iter().any(|c| !c.passed));
    Ok(out)
}

/// Stops every server at once. Each leaves, handing its keys to the others, and exits 0; the
/// shard master refuses the last one (nothing could take its keys), which stops anyway and stays
/// a member: its keys are then unavailable, and must read as such, not as missing.
fn all_stop_at_once(rt: &Runtime, cluster: &mut Cluster, master: &str, probe_key: &str) -> Result<String> {
    let before = rt.block_on(current_config(master))?;
    ensure!(
        before.len() == cluster.nodes().len(),
        "the shard master has {} members, expected {}",
        before.len(),
        cluster.nodes().len()
    );
    let held_before = rt.block_on(keys_held(&before))?;
    let exits = stop_all_at_once(cluster)?;
    let unclean: Vec<usize> =
        exits.iter().enumerate().filter(|(_, clean)| !**clean).map(|(id, _)| id).collect();
    ensure!(unclean.is_empty(), "node(s) {unclean:?} did not exit with status 0 within {STOP_TIMEOUT:?}");

    let after = rt.block_on(current_config(master))?;
    let members: Vec<&str> = after.members().map(|(_, addr)| addr).collect();
    ensure!(
        members.len() == 1,
        "the shard master has {} member(s) after every server stopped, expected 1 (the last cannot \
         leave with keys): {members:?}",
        members.len()
    );
    let last = members[0];
    let log = cluster.nodes()[node_by_addr(cluster, last)?].log();
    let refusal = log.lines().find(|line| line.contains("last member")).with_context(|| {
        format!("the log of {last}, the member left, does not say it was refused as the last member")
    })?;
    let held = number_after(refusal, "holds ");
    if let Some(held) = held {
        ensure!(
            held == held_before,
            "{last} was refused holding {held} keys, but the cluster held {held_before} before stopping"
        );
    }
    let probe = rt.block_on(async {
        let client = Client::cluster_builder(master)
            .timeout(Duration::from_millis(500))
            .attempts(2)
            .connect()
            .await
            .context("cannot connect to the cluster")?;
        Ok::<_, anyhow::Error>(client.get(probe_key).await)
    })?;
    ensure!(
        probe.is_err(),
        "with every server stopped, get({probe_key}) answered {:?}: its data must read as \
         unavailable, not missing",
        probe.ok()
    );
    let held =
        held.map_or_else(|| format!("{held_before} keys (by the servers' count)"), |h| format!("{h} keys"));
    Ok(format!(
        "{} exited 0; {last} stays a member, refused as the last \
         with all {held}, which read as unavailable",
        exits.len()
    ))
}

/// The number right after `marker` in `line`, if any.
fn number_after(line: &str, marker: &str) -> Option<u64> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Keys held by all members, by what each reports.
async fn keys_held(config: &Config) -> Result<u64> {
    let mut total = 0;
    for (_, addr) in config.members() {
        total += server_status(addr, Duration::from_secs(5))
            .await
            .with_context(|| format!("cannot read the status of {addr}"))?
            .keys;
    }
    Ok(total)
}

/// Stops the member that joined first; returns its address and the number of members left.
fn leave_oldest(rt: &Runtime, cluster: &mut Cluster, master: &str) -> Result<(String, usize)> {
    let before = rt.block_on(current_config(master))?;
    let oldest = before.members().next().context("the cluster has no member")?.1.to_owned();
    let id = node_by_addr(cluster, &oldest)?;
    let clean = cluster.node_mut(id).stop(STOP_TIMEOUT)?;
    ensure!(clean, "node {id} ({oldest}) did not exit with status 0 after leaving");
    let after = rt.block_on(current_config(master))?;
    ensure!(after.id_of(&oldest).is_none(), "{oldest} is still a member after it stopped");
    ensure!(after.len() + 1 == before.len(), "{} members after a leave from {}", after.len(), before.len());
    Ok((oldest, after.len()))
}

/// Starts one more server, which joins; returns its address and the number of members.
fn join_new(rt: &Runtime, cluster: &mut Cluster, master: &str) -> Result<(String, usize)> {
    let id = cluster.add_node()?;
    let addr = cluster.nodes()[id].client_addr().to_string();
    let after = rt.block_on(current_config(master))?;
    ensure!(after.id_of(&addr).is_some(), "{addr} started but is not a member");
    Ok((addr, after.len()))
}

async fn values_intact(client: &Client, kept: &BTreeMap<String, String>) -> Result<()> {
    for (key, want) in kept {
        let got = client.get(key.as_str()).await.with_context(|| format!("get({key})"))?;
        ensure!(got.as_deref() == Some(want.as_str()), "{key} holds {got:?}, expected {want:?}");
    }
    Ok(())
}

/// 5 servers: the parallel test, then the oldest server leaves, four times, with the parallel
/// test and every value written before read back after each leave.
fn leaves_one_by_one(options: &Options, rt: &Runtime) -> Result<Vec<CheckOutcome>> {
    let mut cluster = start_cluster(options, 5)?;
    let master = master_addr(&cluster)?;
    let keys = Keys::new("l-");
    let (clients, mut kept) = rt.block_on(async {
        let clients = vec![cluster_client(&master).await?, cluster_client(&master).await?];
        let mut kept = BTreeMap::new();
        for i in 0..KEPT_VALUES {
            let (key, value) = (format!("l-kept-{i}"), format!("value {i} ✓"));
            clients[0].put(key.as_str(), value.as_str()).await.with_context(|| format!("put({key})"))?;
            kept.insert(key, value);
        }
        Ok::<_, anyhow::Error>((clients, kept))
    })?;
    let mut out =
        vec![rt.block_on(verdict("5 servers: parallel (2 clients)", checks::parallel(&clients, &keys)))];
    if out[0].passed {
        // What the parallel test leaves behind: its two keys, emptied.
        kept.extend([(keys.key(0), String::new()), (keys.key(20), String::new())]);
    }
    for step in 1..=4 {
        let members = 6 - step;
        let started = Instant::now();
        let result = leave_oldest(rt, &mut cluster, &master).and_then(|(addr, _)| {
            rt.block_on(values_intact(&clients[0], &kept))?;
            Ok(format!("{addr} left; {} values intact", kept.len()))
        });
        let name =
            format!("5 servers: leave {step}/4 ({members} -> {}): exits 0, values intact", members - 1);
        out.push(outcome(name, started, result));
        let name = format!("5 servers: parallel after leave {step}/4 ({} left)", members - 1);
        out.push(rt.block_on(verdict(name, checks::parallel(&clients, &keys))));
    }
    keep_files_if_asked(&mut cluster, out.iter().any(|c| !c.passed));
    Ok(out)
}

/// 5 servers and key 81: append "MUDA " and check the whole value at each of 9 steps; the oldest
/// server leaves after each of the first 4 (5 -> 1), a new one joins after each of the next 5.
fn muda(options: &Options, rt: &Runtime) -> Result<Vec<CheckOutcome>> {
    let mut cluster = start_cluster(options, 5)?;
    let master = master_addr(&cluster)?;
    let client = rt.block_on(cluster_client(&master))?;
    let read = |want: &str| {
        let got = rt.block_on(client.get(MUDA_KEY)).context("get(81)")?;
        ensure!(got.as_deref() == Some(want), "key 81 holds {got:?}, expected {want:?}");
        Ok(())
    };
    let mut out = Vec::new();
    let mut servers = 5;
    for step in 1..=9 {
        let leave = step <= 4;
        let next = if leave { servers - 1 } else { servers + 1 };
        let change = if leave { "the oldest leaves" } else { "one joins" };
        let on = if servers == 1 { "1 server".to_owned() } else { format!("{servers} servers") };
        let name = format!("MUDA step {step}/9 on {on}, then {change} ({servers} -> {next})");
        let started = Instant::now();
        let result = rt
            .block_on(client.append(MUDA_KEY, MUDA))
            .context("append(81)")
            .and_then(|()| read(&MUDA.repeat(step)))
            .and_then(|()| {
                let (addr, members) = if leave {
                    leave_oldest(rt, &mut cluster, &master)?
                } else {
                    join_new(rt, &mut cluster, &master)?
                };
                ensure!(members == next, "{members} members after the change, expected {next}");
                Ok(format!("\"MUDA \" x {step}; {addr} {}", if leave { "left" } else { "joined" }))
            });
        out.push(outcome(name, started, result));
        servers = rt.block_on(current_config(&master)).map_or(next, |config| config.len());
    }
    let started = Instant::now();
    let result = read(&MUDA.repeat(9)).map(|()| "\"MUDA \" x 9".to_owned());
    out.push(outcome(
        format!("MUDA after the last join, on {servers} servers: value intact"),
        started,
        result,
    ));
    keep_files_if_asked(&mut cluster, out.iter().any(|c| !c.passed));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_count_of_a_refusal() {
        let line = "WARN could not leave the cluster code=FailedPrecondition cause=127.0.0.1:9 is the \
                    last member and holds 6 keys: no server could take them";
        assert_eq!(number_after(line, "holds "), Some(6));
        assert_eq!(number_after("holds many", "holds "), None);
        assert_eq!(number_after("nothing", "holds "), None);
    }
}
