//! A linearizability checker for the store's per-key register model (being written).
