//! Watching the members: the driver of [`super::plan::detector`]. Every heartbeat it pings each
//! member and fails over the one the detector names: silent (and not vouched for by a member
//! that heard from it lately), restarted, or cut off from a peer
//! (while that failover waits for a change in progress, the change's waits count the member as
//! silent, so it does not wait for it).

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::future::join_all;
use tracing::{info, warn};

use super::calls::HEARTBEAT;
use super::failover::{fail_member, fail_silent_member};
use super::plan::detector::{Detector, Heard, Verdict, cut_off};
use super::shared::Shared;
use crate::Config;

/// How lately another member must have heard from a member silent to the shard master, to
/// vouch for it.
const VOUCH_FRESH: Duration = Duration::from_millis(300);

/// Watches the members for as long as it runs: pings each every heartbeat, and fails one that
/// has not answered for the failure timeout, or that restarted (with a replication factor of 2
/// or more: otherwise a member's slots have no other copy, and wait for it).
pub(crate) async fn watch(shared: &Shared) {
    let (records, calls) = (&shared.records, &shared.calls);
    let mut detector = Detector::new(calls.failure_timeout);
    loop {
        calls.clock.sleep(HEARTBEAT).await;
        let config = records.current();
        let members: Vec<String> = config.members().map(|(_, a)| a.to_owned()).collect();
        let sent = calls.now();
        let answers = join_all(members.iter().map(|address| calls.pong(address))).await;
        let mut reports = Vec::new();
        let mut vouched = BTreeSet::new();
        let mut heard: Vec<(String, Heard)> = members
            .into_iter()
            .zip(answers)
            .map(|(address, answer)| {
                let heard = match answer {
                    // One that kept its data and waits to be taken back as this member is
                    // not failed over: its join does that, or fails its old self first.
                    Some(pong) if records.restarted(&address, pong.incarnation) => match pong.resume {
                        Some(resume) if config.id_of(&address) == Some(resume.member) => Heard::Alive,
                        _ => Heard::Restarted,
                    },
                    Some(pong) => {
                        reports.extend(pong.unheard.into_iter().map(|report| (address.clone(), report)));
                        let fresh =
                            pong.heard.into_iter().filter(|h| h.ago <= VOUCH_FRESH && h.peer != address);
                        vouched.extend(fresh.map(|h| h.peer));
                        Heard::Alive
                    }
                    None => Heard::Nothing,
                };
                (address, heard)
            })
            .collect();
        for (address, answer) in &mut heard {
            if *answer == Heard::Nothing && vouched.contains(address) {
                *answer = Heard::Vouched;
            }
        }
        let replicated = config.replication().factor > 1;
        match detector.round(&heard, sent, calls.now(), replicated) {
            Verdict::Wait if replicated => {
                let Some((address, by)) = cut_off(&heard, &reports, calls.failure_timeout) else { continue };
                warn!(server = address, by = ?by, "members cannot reach a member: failing it over");
                // Recorded first: a join it makes once failed over must find its hold-off.
                records.failed_for_cut(&address, calls.now());
                calls.judge_cut_off(&address, true);
                fail(shared, &mut detector, &config, &address, Why::CutOff).await;
                calls.judge_cut_off(&address, false);
            }
            Verdict::Wait => {}
            Verdict::Restarted(address) => {
                // A member that restarted lost what it held: fail its old self at once.
                warn!(server = address, "a member restarted and lost its data: failing it over");
                fail(shared, &mut detector, &config, &address, Why::Restarted).await;
            }
            Verdict::Silent(address, silent) => {
                warn!(server = address, silent = ?silent, "a member stopped answering: failing it over");
                fail(shared, &mut detector, &config, &address, Why::Silent).await;
            }
        }
    }
}

/// Why the detector names a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// It stopped answering: if it answers again by the time the failover can run, it is not
    /// failed.
    Silent,
    /// It answers, but members cannot reach it.
    CutOff,
    /// It restarted, and lost what it held: seen again at the next round if its failover fails.
    Restarted,
}

/// Fails member `address` of `config` over, then resumes `detector` (no round ran meanwhile:
/// what the others did then was not watched) and forgets the member once it is failed (or
/// restarted: its restart is seen again).
async fn fail(shared: &Shared, detector: &mut Detector, config: &Config, address: &str, why: Why) {
    let id = config.id_of(address);
    let failed = match why {
        Why::Silent => fail_silent_member(shared, address, id).await,
        Why::CutOff | Why::Restarted => fail_member(shared, address, id).await,
    };
    detector.resume(shared.calls.now());
    match failed {
        Ok(config) => {
            detector.forget(address);
            info!(server = address, epoch = config.epoch(), "failed over");
        }
        Err(err) => {
            if why == Why::Restarted {
                detector.forget(address);
            }
            warn!(server = address, cause = %err, "could not fail the member over");
        }
    }
}
