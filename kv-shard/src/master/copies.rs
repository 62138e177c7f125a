//! Sending the copies former secondaries kept, in place of a primary that died: to the new
//! owner of a slot the dead primary was handing off, or, as the snapshot the primary would have
//! sent, to a secondary still catching up that is to take the slot over.

use crate::Config;
use crate::Slot;
use crate::messages::HandOffCopy;
use crate::roles::secondaries;
use tracing::warn;

use super::calls::Calls;

/// Has a secondary of `slots` in `before` send the copy it kept of them to `to`, in place of
/// their primary `sender`, which died during the move to `next`; returns whether one did.
pub(crate) async fn hand_off_copies(
    calls: &Calls,
    before: &Config,
    next: &Config,
    sender: &str,
    to: &str,
    slots: &[Slot],
) -> bool {
    let Some(&first) = slots.first() else { return true };
    let request = HandOffCopy {
        epoch: next.epoch(),
        sender: sender.to_owned(),
        to: to.to_owned(),
        slots: slots.to_vec(),
        as_snapshot: false,
    };
    for holder in secondaries(before, first) {
        if next.id_of(holder).is_none() {
            continue;
        }
        match calls.hand_off_copy(holder, &request).await {
            Ok(report) => {
                warn!(
                    sender,
                    holder,
                    to,
                    slots = slots.len(),
                    keys = report.keys_sent,
                    "a dead sender's slots were handed off from a copy"
                );
                return true;
            }
            Err(err) => warn!(sender, holder, cause = %err, "no copy of a dead sender's slots here"),
        }
    }
    false
}

/// Has `holder`, a former secondary of `slots` (whose primary `server` failed), send the copy
/// it kept of them to `to`, a secondary of them in `config` still catching up, as the snapshot
/// the primary would have sent; returns whether `to` is up to date now.
pub(crate) async fn snapshot_from_copy(
    calls: &Calls,
    config: &Config,
    server: &str,
    holder: &str,
    to: &str,
    slots: &[Slot],
) -> bool {
    let request = HandOffCopy {
        epoch: config.epoch(),
        sender: server.to_owned(),
        to: to.to_owned(),
        slots: slots.to_vec(),
        as_snapshot: true,
    };
    match calls.hand_off_copy(holder, &request).await {
        Ok(report) => {
            warn!(
                server,
                holder,
                to,
                slots = slots.len(),
                keys = report.keys_sent,
                "a former secondary's copy brought a failed primary's heir up to date"
            );
            true
        }
        Err(err) => {
            warn!(server, holder, to, cause = %err, "could not bring the heir up to date from a kept copy");
            false
        }
    }
}
