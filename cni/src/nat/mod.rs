//! nf_tables over netlink (being written).
