//! Repairing what failures left behind: the driver of [`super::plan::catch_up`].
//!
//! Every member that answers and is behind is brought up to the current epoch, one epoch at a
//! time, and so is a failed member that was only cut off (it learns it was failed over, and
//! joins again); where a server still waits for slots or owes them, the current epoch is installed again
//! at every server at it, which makes their senders resume the hand-offs that failed. Only when
//! no change runs: a change in progress is never second-guessed. An install here is given up
//! once its server, or any member, stops answering: the repairs hold the change lock, which a
//! failover waits for, and a server that is gone (a leaver that stopped right after its leave, a
//! receiver a sender waits for) must not hold it.

use futures_util::future::join_all;
use tracing::{info, warn};

use super::plan::catch_up::catch_up_steps;
use super::shared::Shared;
use crate::messages::InstallReport;

/// One round of repairs; returns how many installs it made.
pub(crate) async fn reconcile(shared: &Shared) -> usize {
    let (records, calls) = (&shared.records, &shared.calls);
    let current = records.current();
    let history = records.history();
    let mut involved = records.involved(&current);
    involved.extend(records.evicted_servers());
    involved.sort_unstable();
    involved.dedup();
    // Probed without the lock: a server that does not answer must not hold up a failover.
    let statuses = join_all(involved.iter().map(|address| calls.status_of(address))).await;
    let Ok(_serialised) = shared.changes.try_lock() else { return 0 };
    if records.current().epoch() != current.epoch() {
        return 0;
    }
    let members: Vec<&str> = current.members().map(|(_, address)| address).collect();
    let mut installs = 0;
    let mut waiting = false;
    let mut up_to_date = Vec::new();
    // A server outside the membership is watched until it answers, at the current epoch, that
    // it owes nothing (or answers as another process, which holds nothing): one still behind
    // has not learnt yet what it owes (a leaver whose sender install a shard master restart cut
    // short, whose hand-off a failover then carried over).
    records.retain_owing(|address| {
        let status = involved.iter().zip(&statuses).find(|(a, _)| *a == address).map(|(_, s)| s);
        match status {
            Some(Ok(status)) => {
                (status.outgoing_slots > 0 || status.epoch < current.epoch())
                    && !records.restarted(address, status.incarnation)
            }
            Some(Err(_)) | None => true,
        }
    });
    // A failed member is watched until it answers at the epoch that removed it, or later (it
    // has heard), or as another process (which holds nothing of the failed one's).
    records.retain_evicted(|address, epoch| {
        let status = involved.iter().zip(&statuses).find(|(a, _)| *a == address).map(|(_, s)| s);
        match status {
            Some(Ok(status)) => status.epoch < epoch && !records.restarted(address, status.incarnation),
            Some(Err(_)) | None => true,
        }
    });
    for (address, status) in involved.iter().zip(statuses) {
        let Ok(status) = status else { continue };
        // A restarted member holds nothing of what it held: never hand it that role again.
        if records.restarted(address, status.incarnation) {
            continue;
        }
        waiting |= status.incoming_slots > 0 || status.outgoing_slots > 0;
        if status.epoch == current.epoch() {
            up_to_date.push(address.clone());
        }
        // A leaver that missed its last epochs is brought up to date too: then it hands off.
        if status.epoch >= current.epoch() {
            continue;
        }
        let Some(steps) = catch_up_steps(&history, address, status.epoch) else {
            warn!(server = address, epoch = status.epoch, "too far behind to catch up step by step");
            continue;
        };
        for (previous, next) in steps {
            let deadline = calls.now() + calls.move_timeout;
            installs += 1;
            let install = shared.install_while_alive(address, &members, &previous, &next, deadline);
            // A step short of the current epoch is over once the server holds it: a hand-off it
            // owes at that epoch may not get through (its receivers are at a later one), and is
            // carried over by the next step's install.
            let result = if next.epoch() < current.epoch() {
                tokio::select! {
                    biased;
                    result = install => result,
                    () = calls.until_at_epoch(address, next.epoch()) => Ok(InstallReport::default()),
                }
            } else {
                install.await
            };
            if let Err(err) = result {
                warn!(server = address, cause = %err, "could not bring a server up to date");
                break;
            }
            info!(server = address, epoch = next.epoch(), "brought a lagging server up to date");
        }
    }
    if waiting && let Some(previous) = history.len().checked_sub(2).map(|i| &history[i]) {
        // Only at servers at the current epoch: the others are being brought up to date.
        let deadline = calls.now() + calls.move_timeout;
        let again = up_to_date
            .iter()
            .map(|address| shared.install_while_alive(address, &members, previous, &current, deadline));
        installs += join_all(again).await.len();
    }
    installs
}
