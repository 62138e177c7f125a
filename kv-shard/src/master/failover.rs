//! Failing a member over: the driver of [`super::plan::failover`]. It asks the other servers
//! what they hold, has kept copies sent where the plan needs them, commits the configuration
//! without the failed member, and installs it everywhere it must go (the protocol is in
//! `kv_replica`'s docs, "Failover").

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::timeout;
use crate::{Config, Error, ServerId, Slot};
use futures_util::future::join_all;
use tracing::info;

use super::calls::HEARTBEAT;
use super::copies::{hand_off_copies, snapshot_from_copy};
use super::plan::failover::{handoffs_between, moves_from, plan_failover};
use super::plan::readmit::refusal;
use super::shared::Shared;
use super::state::Failover;

/// How long a failover waits for the failed member to hear of it, when it was failed over for
/// a cut link (it still answers this shard master).
const TELL_FAILED_TIMEOUT: Duration = Duration::from_millis(500);

/// Fails `server` over, once no other change runs.
pub(crate) async fn fail(shared: &Shared, server: &str) -> Result<Arc<Config>, Error> {
    let _serialised = shared.changes.lock().await;
    fail_locked(shared, server).await
}

/// [`fail`], if `server` is still member `id` by then (it may have been failed and have joined
/// again while this waited for the change lock).
pub(crate) async fn fail_member(
    shared: &Shared,
    server: &str,
    id: Option<ServerId>,
) -> Result<Arc<Config>, Error> {
    let _serialised = shared.changes.lock().await;
    let current = shared.records.current();
    if id.is_none() || current.id_of(server) != id {
        return Ok(current);
    }
    fail_locked(shared, server).await
}

/// [`fail_member`] for a member judged silent. If it waited more than a heartbeat for a change
/// in progress, the member is pinged once more first, and not failed if it answers as the same
/// process: the verdict is stale (it was paused, say, and the change's end found it back). A
/// failover it did not need would leave its slots with one copy fewer, just when the cluster
/// looks healthy again.
pub(crate) async fn fail_silent_member(
    shared: &Shared,
    server: &str,
    id: Option<ServerId>,
) -> Result<Arc<Config>, Error> {
    let judged = shared.calls.now();
    let _serialised = shared.changes.lock().await;
    let current = shared.records.current();
    if id.is_none() || current.id_of(server) != id {
        return Ok(current);
    }
    if shared.calls.now().saturating_duration_since(judged) > HEARTBEAT
        && let Some(pong) = shared.calls.pong(server).await
        && !shared.records.restarted(server, pong.incarnation)
    {
        return Err(Error::Unavailable(format!(
            "{server} answers again, after the change this failover waited for: not failing it over"
        )));
    }
    fail_locked(shared, server).await
}

/// Removes failed member `server`, with the change lock held: its slots go to up-to-date
/// secondaries, which serve them from their copies, and the replica sets refill. Installs the
/// new configuration at every member, and at every server that still owes slots.
pub(crate) async fn fail_locked(shared: &Shared, server: &str) -> Result<Arc<Config>, Error> {
    let (records, calls) = (&shared.records, &shared.calls);
    let before = records.current();
    // Slots it was still handing off at the last change: a secondary sends its copy.
    let previous = records.previous();
    // (If a failover made `before`, its promotions are no hand-offs: counted as moves, those of
    // a failed member that has not switched yet would wait for data it never sends.)
    let promoted = records.promoted_at(before.epoch());
    let moves =
        previous.as_ref().map(|previous| handoffs_between(previous, &before, &promoted)).unwrap_or_default();
    if let Some(previous) = &previous {
        for (to, slots) in moves_from(&moves, server) {
            if calls.receiver_waits(&to).await {
                hand_off_copies(calls, previous, &before, server, &to, &slots).await;
            }
        }
    }
    // What the others hold: which of the failed member's slots they still owe it, and which of
    // their copies are up to date. A slow server is asked again, longer: what it owes would
    // otherwise be given away without its data.
    let others: Vec<String> = records.involved(&before).into_iter().filter(|a| a != server).collect();
    let statuses = join_all(others.iter().map(|a| calls.status_for_failover(a))).await;
    let answers: Vec<_> = others.into_iter().zip(statuses.into_iter().map(Result::ok)).collect();
    let mut plan = plan_failover(&before, &moves, server, &answers);
    // A slot with no up-to-date copy at a server that answered would go to its first
    // secondary regardless: if that one does not answer either (two failures at once, or this
    // shard master cut off), promoting it serves nothing and may hand the slot to a dead copy
    // while the failed member was only slow. Not now: the detector asks again.
    let silent = |address: &str| answers.iter().any(|(a, status)| a == address && status.is_none());
    if let Some(to) = plan.behind.keys().find(|to| silent(to)) {
        return Err(Error::Unavailable(format!(
            "{to}, which would take slots of {server}, does not answer either: not failing {server} over now"
        )));
    }
    // A durable member may come back with its data (it keeps it on disk: the members that
    // answer do, and it would too): a copy that is not up to date would lose what that data
    // holds for good. Not now: it is taken back when it restarts, or the detector asks again.
    let durable = answers.iter().any(|(_, status)| status.as_ref().is_some_and(|s| s.engine.durable));
    let uncovered = plan
        .behind
        .iter()
        .find(|(_, slots)| slots.iter().any(|slot| !plan.retired.values().any(|kept| kept.contains(slot))));
    // (Unless it came back without it, or with data that cannot be taken back: then what the
    // copies hold is all there is.)
    let came_back_empty = async {
        calls.pong(server).await.is_some_and(|pong| {
            records.restarted(server, pong.incarnation)
                && pong
                    .resume
                    .is_none_or(|resume| refusal(&records.history(), &before, server, &resume).is_some())
        })
    };
    if durable
        && let Some((to, slots)) = uncovered
        && !came_back_empty.await
    {
        return Err(Error::Unavailable(format!(
            "no up-to-date copy of {} slots of {server} answers ({to}'s is catching up), and {server} keeps \
             its data on disk: not failing it over now, waiting for it to come back",
            slots.len()
        )));
    }
    // Eventual mode: promoting a background copy while a synchronous secondary is silent would
    // lose the writes acknowledged since the last flush if that secondary is only slow (or the
    // failed member only unheard). Not now: once that secondary is known failed, or answers,
    // the detector's next attempt decides.
    if let Some((quiet, slots)) = plan.unsure.iter().next() {
        return Err(Error::Unavailable(format!(
            "{quiet}, the synchronous secondary of {} slots of {server}, does not answer: not failing \
             {server} over to background copies now",
            slots.len()
        )));
    }
    // Slots with no up-to-date copy: a former secondary that kept its copy brings the first
    // secondary up to date, which then takes them.
    for (to, slots) in &plan.behind {
        let Some(id) = before.id_of(to) else { continue };
        let mut left: BTreeSet<Slot> = slots.iter().copied().collect();
        for (holder, kept) in &plan.retired {
            let from_here: Vec<Slot> = left.iter().copied().filter(|slot| kept.contains(slot)).collect();
            if !from_here.is_empty()
                && snapshot_from_copy(calls, &before, server, holder, to, &from_here).await
            {
                plan.heirs.extend(from_here.iter().map(|&slot| (slot, id)));
                left.retain(|slot| !from_here.contains(slot));
            }
        }
    }
    let passed_over = plan
        .heirs
        .iter()
        .filter(|(slot, heir)| before.replicas_of_slot(**slot).get(1) != Some(*heir))
        .count();
    if passed_over > 0 {
        info!(
            server,
            slots = passed_over,
            "promoting up-to-date secondaries in place of first secondaries still catching up"
        );
    }
    let (next, promoted) = before.fail_to(server, &plan.heirs)?;
    let next = Arc::new(next);
    let carried_slots: usize = plan.carried.values().map(Vec::len).sum();
    let mut state = records.state();
    state.failovers.insert(next.epoch(), Failover { promoted: promoted.clone(), carried: plan.carried });
    state.commit(&next);
    state.evicted.insert(server.to_owned(), next.epoch());
    // The members, and every server that owes slots: it carries its hand-offs over, and is
    // watched until it owes nothing.
    let mut targets: Vec<&str> = next.members().map(|(_, a)| a).collect();
    for address in &plan.owing {
        if next.id_of(address).is_none() {
            targets.push(address);
            state.owing.insert(address.clone());
        }
    }
    shared.keep(state).await?;
    info!(
        epoch = next.epoch(),
        server,
        promoted = promoted.len(),
        carried = carried_slots,
        "configuration changed: member failed"
    );
    let started = calls.now();
    let deadline = started + calls.move_timeout;
    // One that stops answering is not waited for (a leaver that stopped once it owed nothing,
    // its answer lost; a member, failed over next): the repairs bring back those that return.
    let installs = targets.iter().map(|&addr| {
        let (before, next) = (&before, &next);
        async move {
            tokio::select! {
                biased;
                result = shared.install(addr, before, next, &[], deadline) => result,
                () = calls.until_silent(addr, records.incarnation(addr)) => {
                    Err(Error::Unavailable("it stopped answering, or restarted".to_owned()))
                }
            }
        }
    });
    // A member failed over because members could not reach it still answers this shard master:
    // it is told at once (not at the next repair round), so that it stops answering "moving"
    // for slots it was still taking, and its clients go where the slots are now. Not waited
    // for long: the repairs tell it otherwise.
    let tell_failed = async {
        if calls.is_judged(server) {
            let install = shared.install(server, &before, &next, &[], deadline);
            let _told = timeout(calls.clock.as_ref(), TELL_FAILED_TIMEOUT, install).await;
        }
    };
    let (results, ()) = futures_util::future::join(join_all(installs), tell_failed).await;
    let mut problems = Vec::new();
    for (addr, result) in targets.iter().zip(results) {
        if let Err(err) = result {
            problems.push(format!("{addr}: {err}"));
        }
    }
    info!(epoch = next.epoch(), took = ?calls.now() - started, ok = problems.is_empty(), "failover installed");
    if problems.is_empty() {
        Ok(next)
    } else {
        Err(Error::Incomplete { epoch: next.epoch(), reason: problems.join("; "), lost: false })
    }
}
