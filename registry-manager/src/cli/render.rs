//! How a route explanation is printed: the one form shared with `registry-agent resolve`
//! ([`topology::Explained`]), and the exit code of an answer.

use std::process::ExitCode;

use topology::Explained;

use super::EXIT_NO_MANAGER;

/// A live manager's answer in the printed form (the revision is shown in the text only).
pub fn from_wire(e: &proto::RouteExplanation) -> Explained {
    proto::explained(e, false)
}

/// Prints an explanation as JSON (one line) or text and gives the exit code of the answer:
/// 0 with a chosen manager, [`EXIT_NO_MANAGER`] with none eligible (the answer is still
/// printed). A type no host runs in `source` (the registry the answer comes from) is an
/// error: nothing is printed on stdout.
pub fn print_explained(e: &Explained, json: bool, source: &str) -> anyhow::Result<ExitCode> {
    if e.type_unknown() {
        let revision = e
            .revision
            .map(|r| format!(" (revision {r})"))
            .unwrap_or_default();
        anyhow::bail!(
            "no host runs type {:?} in {source}{revision}; check the spelling (`registry-manager registry hosts` lists every host's packages)",
            e.package_type
        );
    }
    if json {
        println!("{}", e.to_json());
    } else {
        print!("{}", e.to_text());
    }
    Ok(if e.chosen.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NO_MANAGER)
    })
}
