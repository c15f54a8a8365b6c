//! `netd` (being written).
fn main() {}
