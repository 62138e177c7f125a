//! The sequential specification of one key, written apart from `kv-core` so that the checker does
//! not trust the code it checks.
//!
//! A transition is split in two: what the operation returns (borrowed from the state, so that
//! comparing it with a recorded output allocates nothing) and how the state changes (applied only
//! when the output matched).

use crate::harness::history::{Input, Output};

/// A key's value; `None` while the key is missing.
pub(super) type State = Option<String>;

/// What an operation returns, borrowed from the state it ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Returned<'s> {
    /// `get`, `lpop`, `rpop`.
    Value(Option<&'s str>),
    /// `put`, `append`.
    Unit,
    /// `delete`: whether the key existed.
    Deleted(bool),
}

impl Returned<'_> {
    /// Whether this is what the history recorded.
    pub(super) fn matches(self, recorded: &Output) -> bool {
        match (self, recorded) {
            (Returned::Value(v), Output::Value(r)) => v == r.as_deref(),
            (Returned::Unit, Output::Unit) => true,
            (Returned::Deleted(d), Output::Deleted(r)) => d == *r,
            _ => false,
        }
    }

    /// The owned output, as the generator records it.
    #[cfg(test)]
    pub(super) fn to_output(self) -> Output {
        match self {
            Returned::Value(v) => Output::Value(v.map(str::to_owned)),
            Returned::Unit => Output::Unit,
            Returned::Deleted(d) => Output::Deleted(d),
        }
    }
}

/// How an operation changes the state, described without building the new state yet.
#[derive(Debug, Clone, Copy)]
pub(super) enum Change<'i> {
    /// Nothing changes.
    None,
    /// The value becomes this.
    Set(&'i str),
    /// This is concatenated to the right end (creating the key).
    Append(&'i str),
    /// The value loses its first `n` bytes (one character).
    DropFront(usize),
    /// The value loses its last `n` bytes (one character).
    DropBack(usize),
    /// The key goes away.
    Remove,
}

impl Change<'_> {
    /// The new state, or `None` when the state does not change.
    pub(super) fn apply(self, state: &State) -> Option<State> {
        match self {
            Change::None => None,
            Change::Set(v) => Some(Some(v.to_owned())),
            Change::Append(v) => {
                let old = state.as_deref().unwrap_or("");
                let mut new = String::with_capacity(old.len() + v.len());
                new.push_str(old);
                new.push_str(v);
                Some(Some(new))
            }
            Change::DropFront(n) => state.as_deref().map(|s| Some(s.get(n..).unwrap_or("").to_owned())),
            Change::DropBack(n) => {
                state.as_deref().map(|s| Some(s.get(..s.len().saturating_sub(n)).unwrap_or("").to_owned()))
            }
            Change::Remove => Some(None),
        }
    }
}

/// Runs `input` on `state`: what it returns, and how the state changes.
///
/// - `get`: the value, or none for a missing key;
/// - `put(v)`: the value becomes `v`;
/// - `append(v)`: the value becomes `old + v` (`"" + v` on a missing key);
/// - `lpop`/`rpop`: none on a missing key and `""` on an empty value, both changing nothing;
///   otherwise the first/last character (a Rust `char`), which is removed;
/// - `delete`: whether the key existed; the key goes away.
pub(super) fn transition<'s, 'i>(state: &'s State, input: &'i Input) -> (Returned<'s>, Change<'i>) {
    match input {
        Input::Get => (Returned::Value(state.as_deref()), Change::None),
        Input::Put(v) => (Returned::Unit, Change::Set(v)),
        Input::Append(v) => (Returned::Unit, Change::Append(v)),
        Input::Lpop => match state.as_deref() {
            Some(s) if !s.is_empty() => {
                let n = s.chars().next().map_or(0, char::len_utf8);
                (Returned::Value(s.get(..n)), Change::DropFront(n))
            }
            value => (Returned::Value(value), Change::None),
        },
        Input::Rpop => match state.as_deref() {
            Some(s) if !s.is_empty() => {
                let n = s.chars().next_back().map_or(0, char::len_utf8);
                (Returned::Value(s.get(s.len() - n..)), Change::DropBack(n))
            }
            value => (Returned::Value(value), Change::None),
        },
        Input::Delete => match state {
            Some(_) => (Returned::Deleted(true), Change::Remove),
            None => (Returned::Deleted(false), Change::None),
        },
    }
}

/// Runs `input` on `state` in place and returns its output: the plain sequential model, which
/// the tests and the generator of random histories run.
#[cfg(test)]
pub(super) fn run(state: &mut State, input: &Input) -> Output {
    let (returned, change) = transition(state, input);
    let output = returned.to_output();
    if let Some(new) = change.apply(state) {
        *state = new;
    }
    output
}
