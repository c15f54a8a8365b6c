//! netd daemon (being written).
