//! Taking back a member that restarted with its data kept, in place: the driver of
//! [`super::plan::readmit`]. The configuration it makes has the same members and slots, the
//! member marked as taken back ([`Config::readmit`]); installed everywhere, it has the member
//! serve its slots from its disk and every copy it held or fed rebuilt (the protocol is in
//! `kv_replica`'s docs, "Restarts").

use std::sync::Arc;

use futures_util::future::join_all;
use tracing::{info, warn};

use crate::messages::Resume;
use crate::{Config, Error};

use super::plan::readmit::refusal;
use super::shared::Shared;

/// Takes member `server`, restarted as process `incarnation` with the data `resume` describes,
/// back in place, with the change lock held; or says why it cannot be.
pub(crate) async fn readmit_locked(
    shared: &Shared,
    server: &str,
    incarnation: u64,
    resume: &Resume,
) -> Result<Arc<Config>, Error> {
    let (records, calls) = (&shared.records, &shared.calls);
    let before = records.current();
    if let Some(why) = refusal(&records.history(), &before, server, resume) {
        return Err(Error::FailedPrecondition(why));
    }
    let next = Arc::new(before.readmit(server)?);
    // The new process is recorded with the change, and only if it is saved: otherwise installs
    // of other configurations could reach it as the member it was.
    let mut state = records.state();
    state.incarnations.insert(server.to_owned(), incarnation);
    state.evicted.remove(server);
    state.commit(&next);
    shared.keep(state).await?;
    info!(
        epoch = next.epoch(),
        server, "configuration changed: a member restarted with its data, taken back"
    );
    // Installed at every member; one that does not answer (the others may have crashed with
    // it) is brought up to date by the repairs once it does: the change is done once the member
    // taken back has it.
    let deadline = calls.now() + calls.move_timeout;
    let members: Vec<&str> = next.members().map(|(_, address)| address).collect();
    let installs = members.iter().map(|&address| {
        let (before, next) = (&before, &next);
        async move {
            tokio::select! {
                biased;
                result = shared.install(address, before, next, &[], deadline) => result,
                () = calls.until_silent(address, records.incarnation(address)) => {
                    Err(Error::Unavailable("it stopped answering, or restarted".to_owned()))
                }
            }
        }
    });
    let mut result = Ok(Arc::clone(&next));
    for (&address, installed) in members.iter().zip(join_all(installs).await) {
        if let Err(err) = installed {
            warn!(server = address, cause = %err, "could not install the configuration");
            // The others are brought up to date by the repairs once they answer; the member
            // taken back must have it.
            if address == server {
                let reason = format!("{address} did not install it ({err})");
                result = Err(Error::Incomplete { epoch: next.epoch(), reason, lost: false });
            }
        }
    }
    result
}
