//! Fault-injecting TCP proxies on loopback (being written).
