//! Configuration of the netd daemon (being written).
