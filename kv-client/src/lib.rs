//! The kv store's client library.
//!
//! A [`Client`] talks to one storage server ([`Client::connect`]) or to a sharded cluster
//! ([`Client::connect_cluster`], which routes each request to the server owning its key) over the
//! native API (`kv.v1.KeyValue`), one HTTP/2 connection per server carrying any number of
//! concurrent requests; it is cheap to clone, and clones share the connections. Every operation
//! acts on one key, atomically.
//!
//! A [`ShardMaster`] client reads the cluster's configuration and changes its membership.
//!
//! Missing keys are not errors: [`Client::get`], [`Client::lpop`] and [`Client::rpop`] return
//! `Ok(None)` for them, and `Ok(Some(""))` for an empty value.
//!
//! # Examples
//!
//! ```no_run
//! # async fn example() -> Result<(), kv_client::Error> {
//! let client = kv_client::Client::connect("127.0.0.1:50051").await?;
//! client.put("greeting", "héllo").await?;
//! client.append("greeting", "!").await?;
//! assert_eq!(client.lpop("greeting").await?.as_deref(), Some("h"));
//! assert_eq!(client.get("greeting").await?.as_deref(), Some("éllo!"));
//! assert_eq!(client.get("missing").await?, None);
//! # Ok(())
//! # }
//! ```

mod channel;
mod client;
mod error;
mod route;
mod shardmaster;

pub use client::{Client, ClientBuilder, ReadFrom};
pub use error::{Error, Result};
pub use shardmaster::{ServerStatus, ShardMaster, server_status};
