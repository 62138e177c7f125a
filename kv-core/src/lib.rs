//! The data model of the kv store, with no network, sharding or replication in sight.
//!
//! A store maps UTF-8 string keys to UTF-8 string values. Every operation acts on one key and is
//! atomic on it: concurrent operations on a key behave as if they ran one after another, in some
//! order (per-key linearizability). Operations on different keys do not wait for each other.
//!
//! The operations ([`Mutation`] for the writes, [`Storage::get`] for the read):
//!
//! | operation        | on a missing key                    | on a present key                                   |
//! |------------------|-------------------------------------|----------------------------------------------------|
//! | `get(k)`         | no value (not an error)             | the value                                          |
//! | `put(k, v)`      | creates `k = v`                     | overwrites with `v`                                |
//! | `append(k, v)`   | creates `k = v`                     | `old + v` (to the right end)                       |
//! | `lpop(k)`        | no value; creates nothing           | removes and returns the first character; `""` on `""` |
//! | `rpop(k)`        | no value; creates nothing           | removes and returns the last character; `""` on `""`  |
//! | `delete(k)`      | `false`                             | removes the key, `true`                            |
//!
//! A *character* is a Unicode scalar value (a Rust `char`), so a pop never splits a UTF-8
//! sequence. Popping the last character leaves the key holding `""`: the key stays.
//!
//! [`Limits`] bound key and value sizes. An operation that would break a limit — including an
//! `append` that would grow a value past it — fails with [`Error`] and changes nothing.
//!
//! The semantics live once, in [`Op::apply`], a pure function over `Option<String>`;
//! engines ([`MemoryStorage`], and the durable `disk::DiskStorage` of feature `disk`) only decide
//! where values are kept and how a key is locked while a mutation runs. The conformance suite in `kv_core::conformance`
//! (feature `conformance`) holds every engine to the same behaviour.

#[cfg(feature = "disk")]
pub mod disk;
mod error;
mod limits;
mod memory;
pub mod session;
mod storage;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod op;

pub use error::{Error, Result};
pub use limits::Limits;
pub use memory::MemoryStorage;
pub use op::{Mutation, Op, Output};
pub use session::{Answer, RequestId, SessionRecord, Sessions};
pub use storage::{EngineStats, ExportCursor, Recording, Storage};
