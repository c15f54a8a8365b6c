//! netd DNS (being written).
