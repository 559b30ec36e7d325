//! The state table: nodes, objects and placement (the seed's "Replica Service Agent" table).

use std::collections::BTreeMap;

use cohort_object_api::ObjectId;
use serde::{Deserialize, Serialize};

/// One node as the coordinator knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Where other nodes reach it (wire role `peer`).
    pub peer_addr: String,
    /// Whether it is registered and alive now.
    pub live: bool,
    /// An operator drains it (`cohort drain`): it gets no new objects, and its objects move to
    /// the other nodes at the next checkpoint; once it holds none it may stop.
    #[serde(default)]
    pub draining: bool,
}

/// Nodes, objects and the placement of each object. Recorded in every manifest's metadata
/// under [`STATE_TABLE_KEY`](super::STATE_TABLE_KEY), so a new leader does not start from zero.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateTable {
    /// Node name → node.
    pub nodes: BTreeMap<String, NodeEntry>,
    /// Object → the node hosting it (or that hosted it last).
    pub placement: BTreeMap<ObjectId, String>,
}

impl StateTable {
    /// Objects whose node is not live: no checkpoint can commit until they are back.
    pub fn absent(&self) -> Vec<ObjectId> {
        self.placement
            .iter()
            .filter(|(_, node)| !self.nodes.get(*node).is_some_and(|n| n.live))
            .map(|(o, _)| o.clone())
            .collect()
    }

    /// The objects placed on `node`.
    pub fn objects_on(&self, node: &str) -> usize {
        self.placement.values().filter(|n| *n == node).count()
    }

    /// Encodes the table for manifest metadata.
    ///
    /// # Errors
    ///
    /// The encoder's complaint (only for ids that cannot be encoded, which validation forbids).
    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(self)
    }

    /// Decodes a table from manifest metadata.
    ///
    /// # Errors
    ///
    /// The decoder's complaint: the metadata is damaged or of another format.
    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}
