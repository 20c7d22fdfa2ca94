//! A located YAML node tree built from parser events with an explicit stack, so no input,
//! however deep, can exhaust the call stack: nesting beyond [`MAX_YAML_DEPTH`] is a located
//! error. Duplicate keys reach the validator intact, and scalars keep their source spelling
//! (a host named `10` stays `10`).

use serde_saphyr::granit_parser::{Event, Options, Parser, ScalarStyle, ScanError};

/// YAML nesting allowed in a topology file: two levels per subdomain (the `subdomains` list
/// and the entry map) plus the host long form, with slack, so the semantic depth check on
/// domains fires first on ordinary files and pathological input stops here.
pub(crate) const MAX_YAML_DEPTH: usize = 2 * crate::tree::MAX_DEPTH + 8;

/// A YAML node and where it starts (1-based line and column).
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) value: Value,
}

/// The shape of a node.
#[derive(Debug)]
pub(crate) enum Value {
    /// A scalar with its text after escapes; `plain` when unquoted (and so open to YAML's
    /// typing of `true`, `null`, numbers).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A problem that stops reading the YAML at all (syntax, nesting, aliases).
#[derive(Debug)]
pub(crate) struct ReadError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
}

impl Node {
    /// What kind of value this is, for "found ..." messages.
    pub(crate) fn kind(&self) -> &'static str {
        match &self.value {
            Value::Seq(_) => "a list",
            Value::Map(_) => "a map",
            Value::Scalar { .. } if self.is_null() => "nothing (null)",
            Value::Scalar { text, plain: true } if text == "true" || text == "false" => {
                "true/false"
            }
            Value::Scalar { text, plain: true } if reads_as_number(text) => "a number",
            Value::Scalar { .. } => "a string",
        }
    }

    /// The text of a scalar as written (`None` for lists and maps).
    pub(crate) fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The text of a scalar that every YAML 1.2 reader (editors, language servers) takes as a
    /// string: quoted, or plain and not null, true/false or a number. `12`, `1.5` and `true`
    /// written plain are not strings there, so a name or address written so is refused by the
    /// parser as the JSON Schema refuses it, instead of the two disagreeing.
    pub(crate) fn as_string(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, plain: false } => Some(text),
            Value::Scalar { text, plain: true }
                if !self.is_null() && self.as_bool().is_none() && !reads_as_number(text) =>
            {
                Some(text)
            }
            _ => None,
        }
    }

    /// True for an empty plain scalar, `~` or `null`.
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// A plain scalar that reads as `true` or `false`.
    pub(crate) fn as_bool(&self) -> Option<bool> {
        match &self.value {
            Value::Scalar { text, plain: true } => match text.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// A plain scalar that reads as a decimal integer.
    pub(crate) fn as_int(&self) -> Option<i128> {
        match &self.value {
            Value::Scalar { text, plain: true } => {
                let t = text.strip_prefix('+').unwrap_or(text);
                if t.is_empty() || t.len() > 38 {
                    return None;
                }
                let digits = t.strip_prefix('-').unwrap_or(t);
                if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                t.parse().ok()
            }
            _ => None,
        }
    }
}

/// True when a plain scalar is a number under the YAML 1.2 core schema: a decimal, octal
/// (`0o17`) or hexadecimal (`0x1f`) integer, a decimal float (`1.5`, `-2e3`, `.5`), or one of
/// `.inf`, `-.inf`, `.nan` in their three spellings.
fn reads_as_number(text: &str) -> bool {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") || matches!(text, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let radix = |prefix: &str, ok: fn(&u8) -> bool| {
        text.strip_prefix(prefix)
            .is_some_and(|d| !d.is_empty() && d.as_bytes().iter().all(ok))
    };
    if radix("0o", |b| (b'0'..=b'7').contains(b)) || radix("0x", u8::is_ascii_hexdigit) {
        return true;
    }
    // [0-9]+(\.[0-9]*)? or \.[0-9]+, then an optional exponent [eE][-+]?[0-9]+
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        None => digits(mantissa),
        Some((whole, frac)) => {
            (digits(whole) && (frac.is_empty() || digits(frac)))
                || (whole.is_empty() && digits(frac))
        }
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

fn scan_error(e: &ScanError) -> ReadError {
    let m = e.marker();
    let mut message = e.to_string();
    for cut in [" at char ", " at line "] {
        if let Some(i) = message.find(cut) {
            message.truncate(i);
        }
    }
    let message = if message.contains("recursion limit") || message.contains("nesting") {
        too_deep_message()
    } else {
        format!("{message}; fix the YAML syntax here")
    };
    ReadError {
        line: m.line().max(1),
        column: m.col() + 1,
        message,
    }
}

fn too_deep_message() -> String {
    format!(
        "the file nests deeper than {MAX_YAML_DEPTH} YAML levels (subdomains may nest {} levels, MAX_DEPTH); flatten the tree",
        crate::tree::MAX_DEPTH
    )
}

/// Reads one YAML document into a node tree. `Ok(None)` for a stream with no document.
pub(crate) fn read(text: &str) -> Result<Option<Node>, ReadError> {
    let mut options = Options::default();
    options.block_nesting_limit = MAX_YAML_DEPTH + 1;
    options.flow_nesting_limit = MAX_YAML_DEPTH + 1;
    let parser = Parser::new_from_str_with_options(text, options);

    enum Open {
        Seq(Node),
        /// A map under construction and the key waiting for its value.
        Map(Node, Option<Node>),
    }
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;

    for item in parser {
        let (event, span) = item.map_err(|e| scan_error(&e))?;
        let (line, column) = (span.start.line().max(1), span.start.col() + 1);
        let too_deep = |line, column| ReadError {
            line,
            column,
            message: too_deep_message(),
        };
        let node = match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => continue,
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(ReadError {
                        line,
                        column,
                        message: "a second YAML document (`---`); a topology file holds exactly one document".to_owned(),
                    });
                }
                continue;
            }
            Event::Alias(_) | Event::UnresolvedAlias(_) => {
                return Err(ReadError {
                    line,
                    column,
                    message: "aliases (`*name`) are not supported in topology files; write the value out in full".to_owned(),
                });
            }
            Event::SequenceStart(..) => {
                if stack.len() >= MAX_YAML_DEPTH {
                    return Err(too_deep(line, column));
                }
                stack.push(Open::Seq(Node {
                    line,
                    column,
                    value: Value::Seq(Vec::new()),
                }));
                continue;
            }
            Event::MappingStart(..) => {
                if stack.len() >= MAX_YAML_DEPTH {
                    return Err(too_deep(line, column));
                }
                stack.push(Open::Map(
                    Node {
                        line,
                        column,
                        value: Value::Map(Vec::new()),
                    },
                    None,
                ));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Open::Seq(n)) | Some(Open::Map(n, None)) => n,
                Some(Open::Map(n, Some(_))) => n, // unreachable for well-formed events
                None => continue,
            },
            Event::Scalar(text, style, _, _) => Node {
                line,
                column,
                value: Value::Scalar {
                    text: text.into_owned(),
                    plain: style == ScalarStyle::Plain,
                },
            },
            #[allow(unreachable_patterns)]
            _ => continue,
        };
        match stack.last_mut() {
            None => root = Some(node),
            Some(Open::Seq(s)) => {
                if let Value::Seq(v) = &mut s.value {
                    v.push(node);
                }
            }
            Some(Open::Map(m, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => {
                    if let Value::Map(v) = &mut m.value {
                        v.push((key, node));
                    }
                }
            },
        }
    }
    Ok(root)
}
