//! Reading a namespace's nf_tables state with `nft -j list ruleset`.
//!
//! Tests use it to check that port mappings are map *elements* (not rules), that the number of
//! rules does not grow with containers, and that nothing is left after DEL or GC. The plugin
//! itself never runs `nft`.

use serde_json::Value;

use crate::ns::{as_vec, Ns};

/// netd's port maps (`table inet netd`).
pub const PORT_MAPS: [&str; 4] = ["ports4", "ports4any", "ports6", "ports6any"];

/// A parsed ruleset.
#[derive(Debug, Clone)]
pub struct Ruleset(pub Value);

impl Ruleset {
    /// `nft -j list ruleset` inside `ns`.
    pub fn of(ns: &Ns) -> Ruleset {
        let out = ns.exec(&["nft", "-j", "list", "ruleset"]);
        Ruleset(serde_json::from_str(&out).unwrap_or_else(|e| panic!("nft -j: {e}: {out}")))
    }

    fn objects(&self) -> Vec<Value> {
        as_vec(self.0["nftables"].clone())
    }

    /// Number of rules in tables named `table` (every family).
    pub fn rules(&self, table: &str) -> usize {
        self.objects()
            .iter()
            .filter(|o| o["rule"]["table"].as_str() == Some(table))
            .count()
    }

    /// Every rule of every table (for messages).
    pub fn all_rules(&self) -> usize {
        self.objects()
            .iter()
            .filter(|o| o.get("rule").is_some())
            .count()
    }

    /// Whether a table `family table` exists.
    pub fn has_table(&self, family: &str, table: &str) -> bool {
        self.objects().iter().any(|o| {
            o["table"]["family"].as_str() == Some(family)
                && o["table"]["name"].as_str() == Some(table)
        })
    }

    /// The elements of set or map `name` in table `table` (any family); empty when the set
    /// does not exist.
    pub fn elems(&self, table: &str, name: &str) -> Vec<Value> {
        self.objects()
            .iter()
            .filter_map(|o| o.get("set").or_else(|| o.get("map")))
            .filter(|s| s["table"].as_str() == Some(table) && s["name"].as_str() == Some(name))
            .flat_map(|s| as_vec(s["elem"].clone()))
            .collect()
    }

    /// The number of port mapping elements in netd's maps.
    pub fn port_elems(&self) -> usize {
        PORT_MAPS.iter().map(|m| self.elems("netd", m).len()).sum()
    }

    /// The raw JSON, pretty-printed (for assertion messages).
    pub fn pretty(&self) -> String {
        serde_json::to_string_pretty(&self.0).unwrap_or_default()
    }
}
