//! Size limits on keys and values.

use crate::{Error, Result};

/// Bounds on what a store accepts. Checked before anything changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key accepted, in bytes of UTF-8.
    pub max_key_len: usize,
    /// Longest value a key may hold, in bytes of UTF-8. An `append` that would produce a longer
    /// value is refused.
    pub max_value_len: usize,
}

impl Limits {
    /// 1 KiB.
    pub const DEFAULT_MAX_KEY_LEN: usize = 1024;
    /// 1 MiB.
    pub const DEFAULT_MAX_VALUE_LEN: usize = 1024 * 1024;

    /// Refuses a key over the limit.
    pub fn check_key(&self, key: &str) -> Result<()> {
        if key.len() > self.max_key_len {
            return Err(Error::KeyTooLarge { len: key.len(), max: self.max_key_len });
        }
        Ok(())
    }

    /// Refuses a value length over the limit.
    pub fn check_value_len(&self, len: usize) -> Result<()> {
        if len > self.max_value_len {
            return Err(Error::ValueTooLarge { len, max: self.max_value_len });
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_key_len: Self::DEFAULT_MAX_KEY_LEN, max_value_len: Self::DEFAULT_MAX_VALUE_LEN }
    }
}
