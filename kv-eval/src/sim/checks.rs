//! The checks at the end of a simulated run, over its recorded history, the final values read
//! at the primaries, and the replicas' engines.
//!
//! The history checks live in [`crate::harness::checks`], shared with the chaos runs against
//! real processes; the bound is the simulator's.
//!
//! - **Linearizable** (strong mode): the harness's checker over the whole history, final reads
//!   included.
//! - **Appends exactly once** (every mode): every append writes a unique token, so a key's final
//!   value lists the appends it holds. No token twice, none that failed definitely, none made
//!   up; and, where the store promises it (strong; eventual with a synchronous secondary), no
//!   acknowledged one missing.
//! - **Replicas identical** once writes have stopped and the background sync has run: every
//!   replica's engine holds the primary's value of every key.
//! - **Liveness**: after the heal, every key takes a successful write within the bound, and
//!   never waits longer than the bound for the next one while clients keep writing.
//! - **No split brain** (every mode): an acknowledged append the final value lacks was
//!   acknowledged, by the server that answered it, before any other server acknowledged a write
//!   of its key at a newer epoch. A primary admits a write only while every secondary's lease is
//!   live, and a failover lets those leases run out before the new primary serves, so a primary
//!   that was replaced acknowledges nothing once its successor does. Eventual mode without a
//!   synchronous secondary may lose the writes acknowledged before a failover (the background
//!   sync had not sent them yet), but never those of a primary that goes on after it was replaced.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::client::Ack;
use crate::harness::history::{History, Input, Outcome};

pub(crate) use crate::harness::checks::{Promises, check_history, longest_write_gap};

/// The longest a key may go without a successful write after the heal (the bound this
/// simulator enforces: failure detection takes 0.8 s, an install and a fence up to 0.5 s more,
/// and a restarted server's join moves its slots back).
pub const LIVENESS_BOUND: Duration = Duration::from_secs(4);

/// The split-brain check: the acknowledged appends that `finals` lack and that their server
/// acknowledged after another server had acknowledged a write of the same key at a newer epoch.
pub(crate) fn check_split_brain(
    history: &History,
    acks: &[Ack],
    finals: &BTreeMap<String, Option<String>>,
) -> Option<String> {
    let acknowledged: BTreeSet<(&str, &str)> = history
        .ops
        .iter()
        .filter_map(|op| match (&op.input, &op.outcome) {
            (Input::Append(value), Outcome::Ok(_)) => Some((op.key.as_str(), value.as_str())),
            _ => None,
        })
        .collect();
    let held = |key: &str, value: &str| {
        let token = value.trim_end_matches(';');
        finals.get(key).and_then(Option::as_ref).is_none_or(|v| v.split(';').any(|t| t == token))
    };
    let mut found = Vec::new();
    for ack in acks {
        let Some(value) = &ack.appended else { continue };
        if !acknowledged.contains(&(ack.key.as_str(), value.as_str())) || held(&ack.key, value) {
            continue;
        }
        let newer = acks.iter().find(|other| {
            other.key == ack.key && other.server != ack.server && other.epoch > ack.epoch && other.at < ack.at
        });
        if let Some(newer) = newer {
            found.push(format!(
                "{}: append {value:?}, acknowledged by {} at epoch {} at {:.3} s, is lost; {} had \
                 acknowledged a write of the key at epoch {} at {:.3} s",
                ack.key,
                ack.server,
                ack.epoch,
                ack.at.as_secs_f64(),
                newer.server,
                newer.epoch,
                newer.at.as_secs_f64()
            ));
        }
    }
    (!found.is_empty()).then(|| {
        let count = found.len();
        found.truncate(3);
        format!("split brain: {count} lost appends acknowledged by a replaced primary: {}", found.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::history::{Operation, Output};

    fn append(process: u64, value: &str) -> Operation {
        Operation {
            process,
            key: "a0".to_owned(),
            input: Input::Append(value.to_owned()),
            invoked: Duration::ZERO,
            completed: Duration::from_secs(9),
            outcome: Outcome::Ok(Output::Unit),
        }
    }

    fn ack(ms: u64, server: &str, epoch: u64, appended: &str) -> Ack {
        Ack {
            at: Duration::from_millis(ms),
            server: server.to_owned(),
            epoch,
            key: "a0".to_owned(),
            appended: Some(appended.to_owned()),
        }
    }

    #[test]
    fn only_a_lost_append_acknowledged_after_a_newer_primary_served_is_split_brain() {
        let history = History { ops: vec![append(1, "early;"), append(1, "late;"), append(2, "new;")] };
        let acks = [ack(100, "s1", 4, "early;"), ack(200, "s2", 5, "new;"), ack(300, "s1", 4, "late;")];
        let finals = BTreeMap::from([("a0".to_owned(), Some("pre;new;".to_owned()))]);
        let found = check_split_brain(&history, &acks, &finals).expect("the late append is split brain");
        assert!(found.contains("1 lost appends") && found.contains("\"late;\""), "{found}");
        assert!(!found.contains("early"), "lost before the failover, as eventual mode may: {found}");

        let kept = BTreeMap::from([("a0".to_owned(), Some("pre;new;late;".to_owned()))]);
        assert_eq!(check_split_brain(&history, &acks, &kept), None, "not lost");
        let same_epoch = [ack(100, "s1", 4, "early;"), ack(200, "s2", 4, "new;"), ack(300, "s1", 4, "late;")];
        assert_eq!(check_split_brain(&history, &same_epoch, &finals), None, "no newer primary");
    }
}
