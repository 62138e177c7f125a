//! The write operations and their meaning, as a pure function over one key's slot.

use crate::{Limits, Result};

/// A write to one key: the unit that engines apply atomically and that later layers (exactly-once
/// retries, replication logs, resharding) carry around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    /// The key written.
    pub key: String,
    /// What is done to it.
    pub op: Op,
}

/// What a [`Mutation`] does to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set the value, creating the key.
    Put(String),
    /// Concatenate to the right end, creating the key.
    Append(String),
    /// Remove and return the first character.
    LPop,
    /// Remove and return the last character.
    RPop,
    /// Remove the key.
    Delete,
}

/// What a mutation returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// `put` and `append` return nothing.
    Unit,
    /// `lpop` and `rpop`: the character removed, `""` for an empty value, or no value for a
    /// missing key.
    Popped(Option<String>),
    /// `delete`: whether the key existed.
    Deleted(bool),
}

impl Output {
    /// The popped value, if this is the output of a pop that found one.
    pub fn into_popped(self) -> Option<String> {
        match self {
            Output::Popped(v) => v,
            Output::Unit | Output::Deleted(_) => None,
        }
    }

    /// Whether this is the output of a delete that found the key.
    pub fn deleted(&self) -> bool {
        matches!(self, Output::Deleted(true))
    }
}

impl Mutation {
    /// `put(key, value)`.
    pub fn put(key: impl Into<String>, value: impl Into<String>) -> Self {
        Mutation { key: key.into(), op: Op::Put(value.into()) }
    }

    /// `append(key, value)`.
    pub fn append(key: impl Into<String>, value: impl Into<String>) -> Self {
        Mutation { key: key.into(), op: Op::Append(value.into()) }
    }

    /// `lpop(key)`.
    pub fn lpop(key: impl Into<String>) -> Self {
        Mutation { key: key.into(), op: Op::LPop }
    }

    /// `rpop(key)`.
    pub fn rpop(key: impl Into<String>) -> Self {
        Mutation { key: key.into(), op: Op::RPop }
    }

    /// `delete(key)`.
    pub fn delete(key: impl Into<String>) -> Self {
        Mutation { key: key.into(), op: Op::Delete }
    }
}

impl Mutation {
    /// A hash of everything the mutation does (operation, key, value), the same in every process
    /// and version: a retry of a write must have the fingerprint of the first attempt.
    pub fn fingerprint(&self) -> u64 {
        let (tag, value): (u8, &str) = match &self.op {
            Op::Put(v) => (1, v),
            Op::Append(v) => (2, v),
            Op::LPop => (3, ""),
            Op::RPop => (4, ""),
            Op::Delete => (5, ""),
        };
        let mut bytes = Vec::with_capacity(9 + self.key.len() + value.len());
        bytes.push(tag);
        bytes.extend_from_slice(&(self.key.len() as u64).to_le_bytes());
        bytes.extend_from_slice(self.key.as_bytes());
        bytes.extend_from_slice(value.as_bytes());
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }
}

impl Op {
    /// Applies the operation to a key's slot (`None`: the key is missing) and returns its output.
    ///
    /// On error the slot is left exactly as it was: every check happens before any change.
    pub fn apply(self, slot: &mut Option<String>, limits: &Limits) -> Result<Output> {
        match self {
            Op::Put(value) => {
                limits.check_value_len(value.len())?;
                *slot = Some(value);
                Ok(Output::Unit)
            }
            Op::Append(value) => {
                let old_len = slot.as_ref().map_or(0, String::len);
                limits.check_value_len(old_len.saturating_add(value.len()))?;
                match slot {
                    Some(old) => old.push_str(&value),
                    None => *slot = Some(value),
                }
                Ok(Output::Unit)
            }
            Op::LPop => Ok(Output::Popped(slot.as_mut().map(|value| match value.chars().next() {
                Some(first) => value.drain(..first.len_utf8()).collect(),
                None => String::new(),
            }))),
            Op::RPop => Ok(Output::Popped(
                slot.as_mut().map(|value| value.pop().map(String::from).unwrap_or_default()),
            )),
            Op::Delete => Ok(Output::Deleted(slot.take().is_some())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(slot: &mut Option<String>, op: Op) -> Result<Output> {
        op.apply(slot, &Limits::default())
    }

    #[test]
    fn append_goes_to_the_right_end_and_creates() {
        let mut slot = None;
        run(&mut slot, Op::Append("ab".into())).unwrap();
        run(&mut slot, Op::Append("c".into())).unwrap();
        assert_eq!(slot.as_deref(), Some("abc"));
    }

    #[test]
    fn pops_take_whole_characters() {
        let mut slot = Some("héllo€".to_owned());
        assert_eq!(run(&mut slot, Op::LPop).unwrap(), Output::Popped(Some("h".into())));
        assert_eq!(run(&mut slot, Op::LPop).unwrap(), Output::Popped(Some("é".into())));
        assert_eq!(run(&mut slot, Op::RPop).unwrap(), Output::Popped(Some("€".into())));
        assert_eq!(slot.as_deref(), Some("llo"));
    }

    #[test]
    fn popping_empty_keeps_the_key_and_missing_creates_nothing() {
        let mut slot = Some(String::new());
        assert_eq!(run(&mut slot, Op::RPop).unwrap(), Output::Popped(Some(String::new())));
        assert_eq!(run(&mut slot, Op::LPop).unwrap(), Output::Popped(Some(String::new())));
        assert_eq!(slot.as_deref(), Some(""));
        let mut missing = None;
        assert_eq!(run(&mut missing, Op::LPop).unwrap(), Output::Popped(None));
        assert_eq!(run(&mut missing, Op::RPop).unwrap(), Output::Popped(None));
        assert_eq!(missing, None);
    }

    #[test]
    fn an_append_past_the_limit_changes_nothing() {
        let limits = Limits { max_key_len: 8, max_value_len: 4 };
        let mut slot = Some("abc".to_owned());
        let err = Op::Append("de".into()).apply(&mut slot, &limits).unwrap_err();
        assert_eq!(err, crate::Error::ValueTooLarge { len: 5, max: 4 });
        assert_eq!(slot.as_deref(), Some("abc"));
        Op::Append("d".into()).apply(&mut slot, &limits).unwrap();
        assert_eq!(slot.as_deref(), Some("abcd"));
        assert!(Op::Put("abcde".into()).apply(&mut slot, &limits).is_err());
        assert_eq!(slot.as_deref(), Some("abcd"));
    }

    #[test]
    fn fingerprints_tell_writes_apart() {
        let all = [
            Mutation::put("k", "v"),
            Mutation::put("k", "w"),
            Mutation::put("kv", ""),
            Mutation::append("k", "v"),
            Mutation::lpop("k"),
            Mutation::rpop("k"),
            Mutation::delete("k"),
        ];
        for (i, a) in all.iter().enumerate() {
            assert_eq!(a.fingerprint(), a.clone().fingerprint());
            for b in &all[i + 1..] {
                assert_ne!(a.fingerprint(), b.fingerprint(), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn delete_reports_whether_the_key_existed() {
        let mut slot = Some("x".to_owned());
        assert_eq!(run(&mut slot, Op::Delete).unwrap(), Output::Deleted(true));
        assert_eq!(run(&mut slot, Op::Delete).unwrap(), Output::Deleted(false));
        assert_eq!(slot, None);
    }
}
