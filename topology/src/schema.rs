//! The JSON Schema of the topology file, for editors (`registry-manager topology schema`).

use crate::file_format::TopologyFile;

/// JSON Schema (draft 2020-12) of the topology file, derived from the file-format types.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(TopologyFile);
    serde_json::to_value(&schema).expect("a schema always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_the_keys() {
        let s = json_schema();
        let text = s.to_string();
        for key in [
            "version",
            "routing",
            "domain",
            "hosts",
            "subdomains",
            "cross_branch",
            "revert_after",
            "address",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
        assert_eq!(s["type"], "object");
    }
}
