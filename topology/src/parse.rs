//! Validation of the topology file (work in progress).

use crate::error::{TopologyError, TopologyErrors};
use crate::topology::Topology;

pub(crate) fn parse_topology(file: &str, _text: &str) -> Result<Topology, TopologyErrors> {
    Err(TopologyErrors(vec![TopologyError {
        file: file.to_owned(),
        line: 1,
        column: 1,
        message: "parser not finished yet".to_owned(),
    }]))
}
