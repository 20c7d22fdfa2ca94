//! The JSON Schema of the topology file, for editors (`registry-manager topology schema`).

use crate::file_format::TopologyFile;

/// JSON Schema (draft-07, the draft editors' YAML language servers support fully) of the
/// topology file, derived from the file-format types. It accepts exactly the files the parser
/// accepts, except for what a schema cannot say: names unique in the tree and the depth limit
/// (a test generates files and checks that the two agree on each).
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<TopologyFile>();
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
