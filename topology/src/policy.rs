//! The `routing:` section of the topology file (the topology file format (docs/topology.md)) and the duration syntax it uses.

use std::fmt;
use std::time::Duration;

/// How long a recovered, nearer manager must stay eligible before a live agent moves back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevertAfter {
    /// Move back after this hold-down; `0s` means at once.
    After(Duration),
    /// Never move back on its own: stay with the current manager until it fails.
    Never,
}

impl RevertAfter {
    /// Parses `500ms`, `5s`, `2m`, `1h`, `0s` or `never`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "never" {
            return Ok(RevertAfter::Never);
        }
        parse_duration(s)
            .map(RevertAfter::After)
            .map_err(|e| format!("{e}, or never"))
    }
}

impl fmt::Display for RevertAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RevertAfter::Never => f.write_str("never"),
            RevertAfter::After(d) => f.write_str(&format_duration(*d)),
        }
    }
}

/// The routing policy of a topology. Defaults: `cross_branch: true`, `revert_after: 5s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoutingPolicy {
    /// After the chain of ancestors, try other branches of the tree (the routing rule (docs/routing.md) tier 4).
    pub cross_branch: bool,
    /// Hold-down before moving back to a nearer manager that recovered.
    pub revert_after: RevertAfter,
}

impl Default for RoutingPolicy {
    fn default() -> Self {
        RoutingPolicy {
            cross_branch: true,
            revert_after: RevertAfter::After(Duration::from_secs(5)),
        }
    }
}

/// Parses a duration: a whole number followed by `ms`, `s`, `m` or `h` (`500ms`, `5s`, `2m`,
/// `1h`, `0s`). The error says what was wrong and shows the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let hint = "use a whole number and a unit: 500ms, 5s, 2m, 1h or 0s";
    let digits_end = s
        .bytes()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    if num.is_empty() {
        return Err(format!(
            "duration {s:?} does not start with a number; {hint}"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} is too large; {hint}"))?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return Err(format!("duration {s:?} has no unit; {hint}")),
        _ => {
            return Err(format!(
                "duration {s:?} has an unknown unit {unit:?}; {hint}"
            ))
        }
    };
    let ms = n
        .checked_mul(ms_per)
        .ok_or_else(|| format!("duration {s:?} is too large; {hint}"))?;
    Ok(Duration::from_millis(ms))
}

/// Formats a duration in the largest unit that divides it exactly (`5s`, `1500ms`, `2m`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".to_owned()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(RevertAfter::parse("never").unwrap(), RevertAfter::Never);
        assert_eq!(
            RevertAfter::parse("0s").unwrap(),
            RevertAfter::After(Duration::ZERO)
        );
    }

    #[test]
    fn rejects_bad_durations_with_a_hint() {
        for bad in [
            "",
            "5",
            "s",
            "5x",
            "-1s",
            "1.5s",
            "5 s",
            "99999999999999999999s",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("500ms"), "{bad:?}: {e}");
        }
        assert!(RevertAfter::parse("always").unwrap_err().contains("never"));
    }

    #[test]
    fn format_round_trips() {
        for s in ["0s", "500ms", "1500ms", "5s", "2m", "1h"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
