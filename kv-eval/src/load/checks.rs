//! The functional checks of the course assignment, through the client library.
//!
//! Each check returns a [`CheckOutcome`] instead of panicking, so a run reports every failure
//! and exits non-zero (the assignment's own scripts died inside a client and still exited 0).
//! Keys carry a per-run prefix, so the checks also run against a server that already has data.

use std::future::Future;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use kv_client::Client;
use serde::Serialize;
use tokio::task::JoinSet;

/// The values of the assignment's parallel test.
const PARALLEL_VALUES: [&str; 5] = ["1.965.000.000", "75.000.000", "32.000.000", "24.000.000", "3.200.000"];

/// The verdict of one check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    /// Which check.
    pub name: String,
    /// Whether every expectation held.
    pub passed: bool,
    /// The first expectation that failed, or `"ok"`.
    pub detail: String,
    /// How long the check took.
    pub seconds: f64,
}

/// Runs `check` and turns its result into a verdict.
pub async fn verdict(name: impl Into<String>, check: impl Future<Output = Result<()>>) -> CheckOutcome {
    let start = Instant::now();
    let result = check.await;
    CheckOutcome {
        name: name.into(),
        passed: result.is_ok(),
        detail: result.err().map_or_else(|| "ok".to_owned(), |err| format!("{err:#}")),
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// Keys of one run: the assignment's numeric keys behind a prefix unique to the run.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys behind `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys { prefix: prefix.into() }
    }

    /// The key the assignment calls `n`.
    pub fn key(&self, n: u32) -> String {
        format!("{}{n}", self.prefix)
    }
}

fn expect_value(what: &str, got: kv_client::Result<Option<String>>, want: Option<&str>) -> Result<()> {
    let got = got.with_context(|| format!("{what} failed"))?;
    ensure!(got.as_deref() == want, "{what}: expected {want:?}, got {got:?}");
    Ok(())
}

/// The sequence test: one client, every operation, missing keys and empty values.
pub async fn sequence(client: &Client, keys: &Keys) -> Result<()> {
    let k = |n| keys.key(n);
    let c = client;
    expect_value("get(10) of a missing key", c.get(k(10)).await, None)?;
    c.put(k(33), "?!?!?").await.context("put(33)")?;
    expect_value("get(33)", c.get(k(33)).await, Some("?!?!?"))?;
    c.append(k(45), "huh?").await.context("append(45) creating the key")?;
    expect_value("get(45) after append", c.get(k(45)).await, Some("huh?"))?;
    c.put(k(45), "huh!").await.context("put(45)")?;
    expect_value("get(45) after put", c.get(k(45)).await, Some("huh!"))?;
    c.append(k(45), "?").await.context("append(45)")?;
    expect_value("get(45) after append", c.get(k(45)).await, Some("huh!?"))?;
    expect_value("lpop(3) of a missing key", c.lpop(k(3)).await, None)?;
    expect_value("rpop(3) of a missing key", c.rpop(k(3)).await, None)?;
    expect_value("get(3) after popping it while missing", c.get(k(3)).await, None)?;
    for (left, want) in
        [(true, "h"), (false, "?"), (true, "u"), (false, "!"), (false, "h"), (true, ""), (false, "")]
    {
        let (what, got) =
            if left { ("lpop(45)", c.lpop(k(45)).await) } else { ("rpop(45)", c.rpop(k(45)).await) };
        expect_value(what, got, Some(want))?;
    }
    expect_value("get(45) after popping it empty", c.get(k(45)).await, Some(""))?;
    expect_value("get(86)", c.get(k(86)).await, None)?;
    expect_value("get(34)", c.get(k(34)).await, None)?;
    c.append(k(86), "URV_ROCKS").await.context("append(86)")?;
    c.append(k(34), "paxos_enjoyer").await.context("append(34)")?;
    expect_value("get(86)", c.get(k(86)).await, Some("URV_ROCKS"))?;
    expect_value("get(34)", c.get(k(34)).await, Some("paxos_enjoyer"))?;
    c.put(k(7), "héllo").await.context("put(7)")?;
    expect_value("lpop(7) of \"héllo\"", c.lpop(k(7)).await, Some("h"))?;
    expect_value("lpop(7) of \"éllo\"", c.lpop(k(7)).await, Some("é"))?;
    ensure!(c.delete(k(7)).await.context("delete(7)")?, "delete(7) did not find the key");
    expect_value("get(7) after delete", c.get(k(7)).await, None)?;
    Ok(())
}

/// The parallel test: `clients.len()` clients at once, client `i` on key `20·i` (the
/// assignment's values).
pub async fn parallel(clients: &[Client], keys: &Keys) -> Result<()> {
    let mut runs = JoinSet::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, key) = (c.clone(), keys.key(20 * i as u32));
        let value = PARALLEL_VALUES[i % PARALLEL_VALUES.len()];
        runs.spawn(async move {
            let who = format!("client {i}");
            c.put(key.clone(), value).await.with_context(|| format!("{who}: put"))?;
            expect_value(&format!("{who}: get"), c.get(key.clone()).await, Some(value))?;
            c.append(key.clone(), value).await.with_context(|| format!("{who}: append"))?;
            let doubled = format!("{value}{value}");
            expect_value(&format!("{who}: get after append"), c.get(key.clone()).await, Some(&doubled))?;
            c.put(key.clone(), "").await.with_context(|| format!("{who}: put \"\""))?;
            expect_value(&format!("{who}: get of \"\""), c.get(key).await, Some(""))
        });
    }
    join(runs).await
}

/// The race test: every client appends `"ORA "` to key 15 five times, at once; the result must
/// hold every append exactly once.
pub async fn race(clients: &[Client], keys: &Keys) -> Result<()> {
    let key = keys.key(15);
    let mut runs = JoinSet::new();
    for c in clients {
        let (c, key) = (c.clone(), key.clone());
        runs.spawn(async move {
            for _ in 0..5 {
                c.append(key.clone(), "ORA ").await.context("append(15)")?;
            }
            Ok(())
        });
    }
    join(runs).await?;
    let want = "ORA ".repeat(5 * clients.len());
    let client = clients.first().context("the race needs at least one client")?;
    expect_value("get(15) after the race", client.get(key).await, Some(&want))
}

/// Waits for every task; the first failure wins.
async fn join(mut runs: JoinSet<Result<()>>) -> Result<()> {
    let mut first_err = None;
    while let Some(result) = runs.join_next().await {
        let result = result.context("a client task panicked").and_then(|r| r);
        if let Err(err) = result {
            first_err.get_or_insert(err);
        }
    }
    first_err.map_or(Ok(()), Err)
}
