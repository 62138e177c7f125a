//! Joins and leaves: the driver of one membership change, from its checks to the end of its
//! data moves (the protocol is in the crate docs, "Moving data", and in `kv_replica`'s,
//! "Moves").
//!
//! A change is checked against what the servers answer ([`super::plan::checks`]), committed,
//! and installed in [`super::plan::moves::install_order`]: the servers that send nothing
//! first, then the senders, which answer once their slots are at the new owners. A server that
//! stops answering is not waited for: the change is reported incomplete, and its failover
//! follows. Nor is a sender that reports it hears nothing from a server that answers the shard
//! master (the link between them is cut): it is presumed dead, and the copies its slots'
//! secondaries kept are sent in its place. With replication, the change is over once the copies it reset have caught up.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::messages::{InstallReport, ServerStatus};
use crate::{Config, Error, Slot};
use futures_util::future::join_all;
use tracing::{info, warn};

use super::copies::hand_off_copies;
use super::failover::fail_locked;
use super::plan::checks;
use super::plan::failover::{moves_between, moves_from};
use super::plan::moves::install_order;
use super::readmit::readmit_locked;
use super::shared::Shared;

/// A membership change a server asks for.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    Join(String),
    Leave(String),
}

/// How a sender's install of a change ended.
enum SenderOutcome {
    /// It answered (done, or failed while it keeps the data).
    Answered(Result<InstallReport, Error>),
    /// It stopped answering pings, or answered as another process (it restarted).
    Silent,
    /// It cannot reach this server, which answers the shard master.
    CutOff(String),
    /// Another server of the change stopped answering pings.
    OtherSilent(String),
}

/// Makes `change`, once no other change runs; returns the configuration it made.
pub(crate) async fn change(shared: &Shared, change: Change) -> Result<Arc<Config>, Error> {
    let (records, calls) = (&shared.records, &shared.calls);
    let _serialised = shared.changes.lock().await;
    if let Change::Join(server) = &change
        && let Some(left) = records.held_off(server, calls.now())
    {
        return Err(Error::Unavailable(format!(
            "{server} was failed over because members could not reach it: it may join again in {:.1} s",
            left.as_secs_f64()
        )));
    }
    let mut before = records.current();
    // A member that restarted with its data kept, before it was failed over: taken back in
    // place if its slots are still where they were.
    let mut restarted = None;
    if let Change::Join(server) = &change
        && before.id_of(server).is_some()
        && let Ok(status) = calls.status_after_restart(server).await
        && records.restarted(server, status.incarnation)
    {
        if let Some(resume) = &status.resume {
            match readmit_locked(shared, server, status.incarnation, resume).await {
                // With one copy of each slot, no one else holds its slots: said as it is, not
                // as the join of a member that lost its data.
                Err(Error::FailedPrecondition(why)) if before.replication().factor <= 1 => {
                    return Err(Error::FailedPrecondition(format!(
                        "{server} restarted with its data, which cannot be taken back ({why}), and with one \
                         copy of each slot no other server holds its slots: they wait for it"
                    )));
                }
                Err(Error::FailedPrecondition(why)) => {
                    warn!(server, why, "a member restarted with its data, which cannot be taken back");
                }
                taken => return taken,
            }
        }
        restarted = Some(status);
    }
    // A member that restarted before it was failed over, empty or with data that cannot be taken
    // back: fail its old self now.
    if let Change::Join(server) = &change
        && before.replication().factor > 1
        && restarted.is_some()
    {
        warn!(
            server,
            "a member restarted without data it can be taken back with: failing its old incarnation over"
        );
        // That failover's outcome is not this join's: an incomplete one still removed the old
        // incarnation (the join goes on, or waits for it to settle), and any other failure is
        // worth a retry. Returned as is, it would read as an incomplete *join*, a member.
        match fail_locked(shared, server).await {
            Ok(_) => {}
            Err(Error::Incomplete { reason, .. }) => {
                warn!(
                    server,
                    reason, "the failover of a restarted member's old incarnation did not reach everyone"
                );
            }
            Err(err) => {
                return Err(Error::Unavailable(format!(
                    "the failover of {server}'s old incarnation failed ({err}); retry"
                )));
            }
        }
        before = records.current();
    }
    let next = match &change {
        Change::Join(server) => before.join(server)?,
        Change::Leave(server) => before.leave(server)?,
    };
    // An earlier change whose data has not settled would be overtaken, its hand-offs lost.
    let answers = statuses(shared, &before).await;
    if let Some(why) = checks::unsettled(&before, &answers) {
        return Err(Error::Unavailable(format!(
            "an earlier change is still settling ({why}); retry shortly"
        )));
    }
    // Nor does it start while a durable member whose slots it moves is down: it comes back with
    // its data, and is taken back only if its slots stayed where they were.
    if let Some(silent) = checks::silent_mover(&before, &next, &answers) {
        return Err(Error::Unavailable(format!(
            "{silent}, whose slots this change moves, does not answer, and keeps its data on disk: retry \
             once it is back, or failed over"
        )));
    }
    match &change {
        Change::Join(server) => {
            let status = calls
                .status_of(server)
                .await
                .map_err(|err| Error::Unavailable(format!("cannot reach storage server {server}: {err}")))?;
            checks::joiner_address(server, &status)?;
            records.joined(server, status.incarnation);
            checks::joiner_data(server, &status, &before)?;
        }
        Change::Leave(server) if next.is_empty() => match calls.status_of(server).await {
            Ok(status) => checks::last_leaver(server, &status)?,
            // Removing a dead last member is allowed: its data is gone with it.
            Err(_) if calls.is_gone(server, records.incarnation(server)).await => {}
            Err(err) => {
                return Err(Error::Unavailable(format!(
                    "cannot tell whether {server}, the last member, holds keys: {err}"
                )));
            }
        },
        Change::Leave(_) => {}
    }
    let next = Arc::new(next);
    let moves = before.moves_to(&next);
    info!(epoch = next.epoch(), members = next.len(), slots_moving = moves.len(), "configuration changed");
    let mut state = records.state();
    state.commit(&next);
    shared.keep(state).await?;
    apply(shared, &before, &next).await?;
    Ok(next)
}

/// Why the last change has not settled, if it has not, from what the servers involved in it
/// answer (those that do not are not waited for: a dead one would block every change).
async fn statuses(shared: &Shared, current: &Config) -> Vec<(String, Option<ServerStatus>)> {
    let involved = shared.records.involved(current);
    let statuses = join_all(involved.iter().map(|address| shared.calls.status_of(address))).await;
    involved.into_iter().zip(statuses.into_iter().map(Result::ok)).collect()
}

/// Installs `next` everywhere: first at the servers that send nothing (so every receiver
/// expects its slots), then at the servers that lose slots, which return once their slots are
/// at the new owners.
async fn apply(shared: &Shared, before: &Config, next: &Config) -> Result<(), Error> {
    let calls = &shared.calls;
    let started = calls.now();
    let deadline = started + calls.move_timeout;
    let order = install_order(before, next);
    // One that stops answering is not waited for: it is failed over once this change is done.
    let installs = order.receivers.iter().map(|addr| async move {
        tokio::select! {
            biased;
            result = shared.install(addr, before, next, &[], deadline) => result,
            () = calls.until_silent(addr, shared.records.incarnation(addr)) => {
                Err(Error::Unavailable("it stopped answering, or restarted".to_owned()))
            }
        }
    });
    let mut missed = Vec::new();
    for (addr, result) in order.receivers.iter().zip(join_all(installs).await) {
        if let Err(err) = result {
            warn!(server = addr, cause = %err, "could not install the configuration");
            missed.push(addr.as_str());
        }
    }

    // The senders get a time of their own, however long the receivers took.
    let deadline = calls.now() + calls.move_timeout;
    // A sender that stops answering pings (it died during its hand-off) is not waited for; nor
    // is one while another member stops answering (a receiver, or a secondary the receivers
    // wait for): that member's failover carries the hand-off over to the new owners, and must
    // not wait for this change.
    let members: Vec<&str> = order.receivers.iter().map(String::as_str).collect();
    let senders: Vec<&str> = order.senders.iter().map(String::as_str).collect();
    let installs = senders.iter().map(|&addr| {
        let others: Vec<(&str, Option<u64>)> = members
            .iter()
            .copied()
            .chain(senders.iter().copied().filter(|&s| s != addr))
            .map(|other| (other, shared.records.incarnation(other)))
            .collect();
        async move {
            tokio::select! {
                biased;
                result = shared.install(addr, before, next, &[], deadline) => SenderOutcome::Answered(result),
                () = calls.until_silent(addr, shared.records.incarnation(addr)) => SenderOutcome::Silent,
                other = calls.until_any_silent(&others) => SenderOutcome::OtherSilent(other.to_owned()),
                peer = calls.until_cut_off(addr) => SenderOutcome::CutOff(peer),
            }
        }
    });
    // A receiver that missed its install (it stopped answering for a while, say a pause) is
    // given it again while the senders run: they would otherwise wait for it to reach the
    // epoch, for as long as the move timeout, while it answers again.
    let again = missed.iter().map(|&addr| async move {
        tokio::select! {
            biased;
            result = shared.install(addr, before, next, &[], deadline) => {
                if result.is_ok() {
                    info!(server = addr, "installed the configuration at a receiver that had missed it");
                }
            }
            () = calls.until_silent(addr, shared.records.incarnation(addr)) => {}
        }
    });
    let (outcomes, _) = futures_util::future::join(join_all(installs), join_all(again)).await;
    let moves = moves_between(before, next);
    let mut problems = Vec::new();
    let mut lost = false;
    let replicated = next.replication().factor > 1;
    for (&sender, outcome) in senders.iter().zip(outcomes) {
        let (err, silent) = match outcome {
            SenderOutcome::Answered(Ok(_)) => continue,
            SenderOutcome::Answered(Err(err)) => (err, false),
            SenderOutcome::Silent => (Error::Unavailable("it stopped answering".to_owned()), true),
            // Its hand-off cannot get through: it is presumed dead, as if silent.
            SenderOutcome::CutOff(peer) => {
                warn!(sender, peer, "a sender cannot reach a server that answers: presuming it dead");
                (Error::Unavailable(format!("it cannot reach {peer}")), true)
            }
            SenderOutcome::OtherSilent(other) => {
                problems.push(format!(
                    "{sender} could not hand off its slots while {other} stopped answering \
                     ({sender} keeps them, and sends them on once {other} is back or failed over)"
                ));
                continue;
            }
        };
        // With copies elsewhere, a silent sender is failed at once; otherwise make sure (one
        // that restarted is gone too: its answer refused the install meant for its old self).
        let gone = (silent && replicated) || calls.is_gone(sender, shared.records.incarnation(sender)).await;
        if !gone {
            // The sender is there and keeps the data; installing this epoch again resumes.
            problems.push(format!("{sender} could not hand off its slots ({err})"));
            continue;
        }
        // The sender is gone. Its slots' secondaries kept copies: one of them sends them.
        let mut abandoned: BTreeMap<String, Vec<Slot>> = moves_from(&moves, sender);
        let mut recovered = Vec::new();
        for (to, slots) in &abandoned {
            if hand_off_copies(calls, before, next, sender, to, slots).await {
                recovered.push(to.clone());
            }
        }
        abandoned.retain(|to, _| !recovered.contains(to));
        if abandoned.is_empty() {
            continue;
        }
        // No copy either: let the receivers serve the slots empty.
        lost = true;
        let slots: usize = abandoned.values().map(Vec::len).sum();
        problems.push(format!("{sender} is unreachable ({err}): the data of its {slots} slots is lost"));
        for (to, slots) in abandoned {
            let deadline = calls.now() + calls.move_timeout;
            if let Err(err) = shared.install(&to, before, next, &slots, deadline).await {
                problems.push(format!("{to} did not take over the lost slots ({err})"));
            }
        }
    }
    // The change is over once the copies it reset have caught up: until then, the copies former
    // secondaries kept (a leaver's among them: it stays up until its leave returns) may be the
    // only up-to-date ones besides the primaries'. A member that stops answering meanwhile is
    // failed over at once, while those copies are there.
    if replicated {
        let members: Vec<&str> = next.members().map(|(_, a)| a).collect();
        let watched: Vec<(&str, Option<u64>)> =
            members.iter().map(|&member| (member, shared.records.incarnation(member))).collect();
        let deadline = calls.now() + calls.move_timeout;
        tokio::select! {
            biased;
            () = calls.until_caught_up(&members, deadline) => {}
            silent = calls.until_any_silent(&watched) => {
                // Unless this shard master is the one cut off: then it fails no one.
                if calls.most_answer(&members).await {
                    warn!(server = silent, "a member stopped answering while copies caught up: failing it over");
                    if let Err(err) = fail_locked(shared, silent).await {
                        problems.push(format!("the failover of {silent} did not finish ({err})"));
                    }
                } else {
                    problems.push(format!("{silent} stopped answering while copies caught up"));
                }
            }
        }
    }
    let moved = before.moves_to(next).len();
    info!(epoch = next.epoch(), slots = moved, took = ?calls.now() - started, ok = problems.is_empty(), "moves done");
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Incomplete { epoch: next.epoch(), reason: problems.join("; "), lost })
    }
}
