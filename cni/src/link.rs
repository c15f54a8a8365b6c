//! rtnetlink operations (being written).
