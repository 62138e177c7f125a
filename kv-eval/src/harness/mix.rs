//! Operation mixes: which operations a workload runs, drawn at random by weight
//! (`get=50,put=50`). The benchmark, the recorded loads and the chaos runner all take one.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, ensure};
use rand::RngExt;
use rand::rngs::SmallRng;
use serde::Serialize;

/// The operations a workload can mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// `get`
    Get,
    /// `put`
    Put,
    /// `append` (values of the keys it hits grow for the whole run)
    Append,
    /// `lpop`
    Lpop,
    /// `rpop`
    Rpop,
    /// `delete`
    Delete,
}

impl OpKind {
    pub(crate) const ALL: [OpKind; 6] =
        [OpKind::Get, OpKind::Put, OpKind::Append, OpKind::Lpop, OpKind::Rpop, OpKind::Delete];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::Append => "append",
            OpKind::Lpop => "lpop",
            OpKind::Rpop => "rpop",
            OpKind::Delete => "delete",
        }
    }
}

/// An operation mix: weights per operation, written `get=50,put=50`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    pub(crate) weights: Vec<(OpKind, u32)>,
    total: u32,
}

impl Mix {
    /// Draws an operation with the mix's weights.
    pub fn pick(&self, rng: &mut SmallRng) -> OpKind {
        let mut roll = rng.random_range(0..self.total);
        for &(op, weight) in &self.weights {
            if roll < weight {
                return op;
            }
            roll -= weight;
        }
        self.weights[0].0
    }
}

impl FromStr for Mix {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut weights = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) =
                part.split_once('=').with_context(|| format!("expected op=weight, got {part:?}"))?;
            let op = OpKind::ALL.into_iter().find(|op| op.name() == name.trim()).with_context(|| {
                format!("unknown operation {name:?} (get, put, append, lpop, rpop, delete)")
            })?;
            let weight: u32 = weight.trim().parse().with_context(|| format!("bad weight in {part:?}"))?;
            if weight > 0 {
                weights.push((op, weight));
            }
        }
        let total = weights.iter().map(|&(_, w)| w).sum::<u32>();
        ensure!(total > 0, "the mix {s:?} has no operation with a positive weight");
        Ok(Mix { weights, total })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.weights.iter().map(|(op, w)| format!("{}={w}", op.name())).collect();
        f.write_str(&parts.join(","))
    }
}

impl Serialize for Mix {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn mixes_parse_and_print() {
        let mix: Mix = "get=50, put=50".parse().unwrap();
        assert_eq!(mix.to_string(), "get=50,put=50");
        assert!("get=0".parse::<Mix>().is_err());
        assert!("fly=3".parse::<Mix>().is_err());
        assert!("get".parse::<Mix>().is_err());
    }

    #[test]
    fn picks_follow_the_weights() {
        let mix: Mix = "get=3,put=1".parse().unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let gets = (0..40_000).filter(|_| mix.pick(&mut rng) == OpKind::Get).count();
        assert!((29_000..31_000).contains(&gets), "{gets} gets of 40000");
    }
}
