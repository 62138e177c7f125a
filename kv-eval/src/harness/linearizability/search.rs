//! The search of Wing & Gong with Lowe's memoisation, over the operations of one key.
//!
//! Every operation becomes a *call* event and, if it must take effect, a *return* event. The
//! events are sorted by time (a call before a return at the same instant, so that touching
//! intervals count as concurrent) and threaded on a doubly linked list; an operation, once
//! linearized, is lifted out of it, and put back in O(1) on backtracking (the nodes remember
//! their neighbours).
//!
//! A *configuration* is the set of linearized operations with the state they leave. In one, the
//! operations that may be linearized next are those whose call comes before the first return
//! left in the list: that return's operation must take effect before anything invoked after it.
//! The search is depth-first: it linearizes a candidate if the model gives the recorded output
//! and the configuration reached is new, and backtracks when no candidate is left. Once no
//! return is left, every operation that must take effect has: success. Operations without a
//! return (outcome unknown) may stay out.
//!
//! What keeps this practical, none of it losing a linearization (the tests hold the search
//! against a brute-force enumeration of all orders):
//! - the cache of seen configurations ([`cache`]): two orders of the same operations that reach
//!   the same state have the same future, so the second is cut off;
//! - the order candidates are tried in: earliest completion first, unknown operations last
//!   unless a waiting read lacks what they write;
//! - *forced* moves: a candidate that returns what it recorded without changing the state is
//!   linearized at once, with no alternative tried;
//! - *dead* configurations: one with a candidate that can no longer return what it recorded is
//!   abandoned at once, rather than when its completion comes up.
//!
//! The work still grows exponentially with the number of operations in flight on one key at
//! once: a handful is quick, a dozen or more may exhaust a time budget.

use std::time::Instant;

use super::cache::{self, Bitset, Cache};
use super::model::{self, Change, State};
use crate::harness::history::{Input, Output};

/// Steps between two looks at the clock.
const CHECK_EVERY: u32 = 1024;
/// End configurations [`end_configs`] collects before giving up.
const MAX_END_CONFIGS: usize = 4096;
/// Longer values read are not checked by [`Search::may_still_match`] (it would cost too much).
const MAX_READ_CHECKED: usize = 64;
const NIL: usize = usize::MAX;

/// One operation as the search sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spec<'h> {
    /// Invocation time, in nanoseconds.
    pub(super) call: u64,
    /// Completion time; `None` for an operation that may take effect at any time after its
    /// call, or never.
    pub(super) ret: Option<u64>,
    /// What it does.
    pub(super) input: &'h Input,
    /// What it must have returned; `None` accepts any output.
    pub(super) expect: Option<&'h Output>,
}

impl Spec<'_> {
    /// The same operation with its outcome forgotten, as if it were unknown.
    pub(super) fn relaxed(self) -> Self {
        Spec { ret: None, expect: None, ..self }
    }

    /// Whether the outcome is unknown (or was forgotten).
    pub(super) fn is_relaxed(&self) -> bool {
        self.ret.is_none() && self.expect.is_none()
    }
}

/// When a search must stop.
pub(super) struct Limit<'a> {
    /// The time budget.
    pub(super) deadline: Option<Instant>,
    /// Asked now and then: another thread may have made this search pointless.
    pub(super) cancelled: &'a dyn Fn() -> bool,
}

impl Limit<'_> {
    fn exceeded(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d) || (self.cancelled)()
    }
}

/// The search stopped before deciding: out of time, cancelled, or too many end configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GaveUp;

/// Whether `ops`, starting from `init`, can be linearized.
///
/// `Ok(None)` if they can; `Ok(Some(i))` if not, where `ops[i]` is the operation whose completion
/// the search never got past: the furthest point any partial linearization reached.
pub(super) fn check(ops: &[Spec<'_>], init: &State, limit: &Limit<'_>) -> Result<Option<usize>, GaveUp> {
    let mut search = Search::new(ops, true);
    match search.run(init, limit, |_, _| true)? {
        Ending::Stopped => Ok(None),
        Ending::Exhausted { deepest } => Ok(Some(deepest.map_or(0, |(_, op)| op))),
    }
}

/// Every configuration in which all operations with a completion time are linearized: the state
/// reached, and the indices of all operations linearized on the way (including some without a
/// completion time, which may take effect later or never).
pub(super) fn end_configs(
    ops: &[Spec<'_>],
    init: &State,
    limit: &Limit<'_>,
) -> Result<Vec<(State, Vec<usize>)>, GaveUp> {
    let mut search = Search::new(ops, false);
    let mut configs = Vec::new();
    let mut too_many = false;
    search.run(init, limit, |bits, state| {
        configs.push((state.clone(), bits.ones().collect()));
        too_many = configs.len() >= MAX_END_CONFIGS;
        too_many
    })?;
    if too_many { Err(GaveUp) } else { Ok(configs) }
}

/// How [`Search::run`] ended.
enum Ending {
    /// The end callback asked to stop.
    Stopped,
    /// Every configuration was tried. `deepest` is the latest deadline a configuration failed
    /// to meet, and the operation that set it: the furthest point the search got to.
    Exhausted { deepest: Option<(u64, usize)> },
}

/// The event list of one search. Node `i` is the `i`-th event in time order; node `head` is
/// the sentinel before the first.
struct Search<'a, 'h> {
    ops: &'a [Spec<'h>],
    node_op: Vec<usize>,
    node_is_call: Vec<bool>,
    node_time: Vec<u64>,
    next: Vec<usize>,
    prev: Vec<usize>,
    call_node: Vec<usize>,
    ret_node: Vec<Option<usize>>,
    head: usize,
    /// Operations without a return event, if the cache may treat them as optional; see
    /// [`Cache::insert_if_new`].
    optional: Option<Vec<u64>>,
}

impl<'a, 'h> Search<'a, 'h> {
    /// `optional_is_optional`: whether operations without a completion time may really be left
    /// out of a linearization (not so for the running operations of [`end_configs`], which are
    /// only optional up to a point).
    fn new(ops: &'a [Spec<'h>], optional_is_optional: bool) -> Self {
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, false, i));
            if let Some(ret) = op.ret {
                // A completion before the invocation is a clock glitch: treat it as instantaneous.
                events.push((ret.max(op.call), true, i));
            }
        }
        // `false < true`: at equal times calls come first, so touching intervals are concurrent.
        events.sort_unstable();
        let n = events.len();
        let mut call_node = vec![0; ops.len()];
        let mut ret_node = vec![None; ops.len()];
        for (node, &(_, is_return, op)) in events.iter().enumerate() {
            if is_return {
                ret_node[op] = Some(node);
            } else {
                call_node[op] = node;
            }
        }
        let mut next: Vec<usize> = (1..=n).collect();
        if let Some(last) = next.last_mut() {
            *last = NIL;
        }
        next.push(if n == 0 { NIL } else { 0 });
        let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { n } else { i - 1 }).collect();
        prev.push(NIL);
        Search {
            ops,
            node_op: events.iter().map(|e| e.2).collect(),
            node_is_call: events.iter().map(|e| !e.1).collect(),
            node_time: events.iter().map(|e| e.0).collect(),
            next,
            prev,
            call_node,
            ret_node,
            head: n,
            optional: optional_is_optional.then(|| {
                let mut mask = Bitset::new(ops.len());
                for (i, op) in ops.iter().enumerate() {
                    if op.ret.is_none() {
                        mask.set(i);
                    }
                }
                mask.words
            }),
        }
    }

    /// The part of the cache key for `op` being linearized; optional operations have none, so
    /// that configurations differing only in them meet in one chain.
    fn zobrist(&self, op: usize) -> u64 {
        match &self.optional {
            Some(mask) if mask[op / 64] & (1 << (op % 64)) != 0 => 0,
            _ => cache::splitmix64(op as u64),
        }
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if let Some(ret) = self.ret_node[op] {
            self.unlink(ret);
        }
    }

    /// Undoes [`Self::lift`]; lifts are undone in reverse order, so the neighbours each node
    /// remembers are the right ones again.
    fn unlift(&mut self, op: usize) {
        if let Some(ret) = self.ret_node[op] {
            self.relink(ret);
        }
        self.relink(self.call_node[op]);
    }

    /// Depth-first search; `at_end` is called in every configuration where all operations with
    /// a return event are linearized, and stops the search by returning `true`.
    fn run(
        &mut self,
        init: &State,
        limit: &Limit<'_>,
        mut at_end: impl FnMut(&Bitset, &State) -> bool,
    ) -> Result<Ending, GaveUp> {
        let mut state = init.clone();
        let mut state_hash = cache::hash_state(&state);
        let mut bits = Bitset::new(self.ops.len());
        let mut bits_hash = 0u64;
        let mut cache = Cache::default();
        let mut deepest: Option<(u64, usize)> = None;
        let mut stack: Vec<Frame> = Vec::new();
        let mut steps: u32 = 0;
        let mut enter = true;
        loop {
            if steps.is_multiple_of(CHECK_EVERY) && limit.exceeded() {
                return Err(GaveUp);
            }
            steps = steps.wrapping_add(1);
            if enter {
                // A new configuration: what may be linearized next.
                let (frame, deadline) = self.expand(&state);
                match deadline {
                    Some(d) => {
                        if deepest.is_none_or(|(t, _)| d.0 > t) {
                            deepest = Some(d);
                        }
                    }
                    None => {
                        if at_end(&bits, &state) {
                            return Ok(Ending::Stopped);
                        }
                    }
                }
                stack.push(frame);
                enter = false;
            }
            let Some(top) = stack.last_mut() else {
                return Ok(Ending::Exhausted { deepest });
            };
            if let Some(&op) = top.candidates.get(top.tried) {
                top.tried += 1;
                let spec = self.ops[op];
                let (returned, change) = model::transition(&state, spec.input);
                if !spec.expect.is_none_or(|e| returned.matches(e)) {
                    continue;
                }
                let new_state = change.apply(&state);
                let new_state_hash = new_state.as_ref().map_or(state_hash, cache::hash_state);
                let new_bits_hash = bits_hash ^ self.zobrist(op);
                bits.set(op);
                let key = cache::mix(new_bits_hash, new_state_hash);
                let optional = self.optional.as_deref();
                if !cache.insert_if_new(key, &bits, new_state.as_ref().unwrap_or(&state), optional) {
                    bits.clear(op);
                    continue;
                }
                let old = new_state.map(|s| std::mem::replace(&mut state, s));
                top.lifted = Some(Lifted { op, old, old_hash: state_hash });
                state_hash = new_state_hash;
                bits_hash = new_bits_hash;
                self.lift(op);
                enter = true;
            } else {
                // Every way on from here failed: back to the configuration before.
                stack.pop();
                let Some(parent) = stack.last_mut() else {
                    return Ok(Ending::Exhausted { deepest });
                };
                if let Some(lifted) = parent.lifted.take() {
                    bits.clear(lifted.op);
                    bits_hash ^= self.zobrist(lifted.op);
                    if let Some(old) = lifted.old {
                        state = old;
                    }
                    state_hash = lifted.old_hash;
                    self.unlift(lifted.op);
                }
            }
        }
    }

    /// The operations that may be linearized next in `state`, in the order to try them, and the
    /// deadline of this configuration: the completion time, and operation, by which it must
    /// have made progress (`None`: every operation that must take effect has).
    ///
    /// The candidates are the calls before the first return node, tried earliest completion
    /// first (the first return's own operation leads), operations that may never take effect
    /// last. Two rules cut the search without losing any linearization:
    /// - if a candidate that must take effect would return what it recorded without changing the
    ///   state (a matching `get`, say), it is the only candidate: any linearization from here can
    ///   be rearranged to start with it, since everything that must precede it already did;
    /// - if a candidate can no longer return what it recorded (see [`Self::may_still_match`]),
    ///   the configuration is dead, with that candidate's completion as its deadline.
    fn expand(&self, state: &State) -> (Frame, Option<(u64, usize)>) {
        let mut candidates = Vec::new();
        let mut forced = None;
        // Characters that waiting reads need and the value lacks.
        let mut awaited: Vec<char> = Vec::new();
        let mut node = self.next[self.head];
        while node != NIL && self.node_is_call[node] {
            let op = self.node_op[node];
            let spec = &self.ops[op];
            if let (Some(ret), Some(expect)) = (spec.ret, spec.expect) {
                let (returned, change) = model::transition(state, spec.input);
                if !returned.matches(expect) {
                    if !self.may_still_match(state, op, ret) {
                        return (Frame::with(Vec::new()), Some((ret, op)));
                    }
                    if let Output::Value(Some(read)) = expect
                        && read.len() <= MAX_READ_CHECKED
                    {
                        awaited.extend(missing_chars(state, read).into_iter().map(|(c, _)| c));
                    }
                } else if forced.is_none() && matches!(change, Change::None) {
                    forced = Some(op);
                }
            }
            candidates.push(op);
            node = self.next[node];
        }
        let deadline = (node != NIL).then(|| (self.node_time[node], self.node_op[node]));
        if let Some(op) = forced {
            return (Frame::with(vec![op]), deadline);
        }
        let ops = self.ops;
        // An optional write that brings what a waiting read lacks is likely what happened.
        let brings = |op: usize| match ops[op].input {
            Input::Put(w) | Input::Append(w) => {
                ops[op].ret.is_none() && w.chars().any(|c| awaited.contains(&c))
            }
            _ => false,
        };
        candidates.sort_by_cached_key(|&op| (!brings(op), ops[op].ret.unwrap_or(u64::MAX), ops[op].call, op));
        (Frame::with(candidates), deadline)
    }

    /// A necessary condition for `ops[op]` to return what it recorded if linearized at some point
    /// before `deadline` (its completion), given `state` and the operations not linearized yet
    /// that may precede it (invoked by then).
    ///
    /// No operation duplicates characters, so each character of a value read must come from the
    /// current value or from a value written later; a missing key needs a `delete`; a present
    /// one, a `put` or an `append`. Without this, an operation that can no longer be satisfied
    /// but completes late keeps the search trying every order of everything invoked until then.
    fn may_still_match(&self, state: &State, op: usize, deadline: u64) -> bool {
        /// What the state must be like for the operation's output.
        #[derive(Clone, Copy)]
        enum Need {
            Missing,
            Present,
            Empty,
            Chars,
        }
        let spec = &self.ops[op];
        let (need, read) = match (spec.input, spec.expect) {
            (Input::Get | Input::Lpop | Input::Rpop, Some(Output::Value(None)))
            | (Input::Delete, Some(Output::Deleted(false))) => (Need::Missing, ""),
            (Input::Delete, Some(Output::Deleted(true))) => (Need::Present, ""),
            (Input::Get | Input::Lpop | Input::Rpop, Some(Output::Value(Some(v)))) if v.is_empty() => {
                (Need::Empty, "")
            }
            (Input::Get | Input::Lpop | Input::Rpop, Some(Output::Value(Some(v)))) => {
                (Need::Chars, v.as_str())
            }
            _ => return true,
        };
        if read.len() > MAX_READ_CHECKED {
            return true;
        }
        let mut missing = missing_chars(state, read);
        let already = match need {
            Need::Missing => state.is_none(),
            Need::Present => state.is_some(),
            Need::Empty => state.as_deref() == Some(""),
            Need::Chars => missing.is_empty(),
        };
        if already {
            return true;
        }
        let mut node = self.next[self.head];
        while node != NIL && self.node_time[node] <= deadline {
            let other = self.node_op[node];
            if self.node_is_call[node] && other != op {
                match (need, self.ops[other].input) {
                    (Need::Missing, Input::Delete)
                    | (Need::Present, Input::Put(_) | Input::Append(_))
                    | (Need::Empty, Input::Put(_) | Input::Append(_) | Input::Lpop | Input::Rpop) => {
                        return true;
                    }
                    (Need::Chars, Input::Put(w) | Input::Append(w)) => {
                        missing.retain_mut(|(c, n)| {
                            *n = n.saturating_sub(w.chars().filter(|x| x == c).count());
                            *n > 0
                        });
                        if missing.is_empty() {
                            return true;
                        }
                    }
                    _ => {}
                }
            }
            node = self.next[node];
        }
        false
    }
}

/// One configuration on the search stack.
struct Frame {
    /// Operations that may be linearized next, in the order to try them.
    candidates: Vec<usize>,
    /// How many of them were tried.
    tried: usize,
    /// The one linearized to reach the configuration above, with what to restore.
    lifted: Option<Lifted>,
}

impl Frame {
    fn with(candidates: Vec<usize>) -> Self {
        Frame { candidates, tried: 0, lifted: None }
    }
}

struct Lifted {
    op: usize,
    /// The state before it, if it changed the state.
    old: Option<State>,
    old_hash: u64,
}

/// The characters of `read` beyond those `state` holds: (character, how many more).
fn missing_chars(state: &State, read: &str) -> Vec<(char, usize)> {
    let mut missing: Vec<(char, usize)> = Vec::new();
    let current = state.as_deref().unwrap_or("");
    for c in read.chars() {
        if !missing.iter().any(|&(m, _)| m == c) {
            let wanted = read.chars().filter(|&x| x == c).count();
            let held = current.chars().filter(|&x| x == c).count();
            if wanted > held {
                missing.push((c, wanted - held));
            }
        }
    }
    missing
}
