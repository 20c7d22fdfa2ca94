//! Validation of the topology file, version 1 (the topology file format (docs/topology.md)). The YAML is read into a located node
//! tree (`node.rs`, depth-limited, no recursion), then walked once; every problem found is kept, so
//! one run reports all the semantic errors of a file. Only a file without any error becomes a
//! [`Topology`].

use std::collections::HashMap;

use crate::error::{TopologyError, TopologyErrors};
use crate::names::{is_valid_name, DomainName, HostName, NameError, NameKind};
use crate::node::{Node, Value};
use crate::policy::{RevertAfter, RoutingPolicy};
use crate::tree::{DomainId, Topology, TopologyBuilder, MAX_DEPTH, MAX_FILE_BYTES};

const ROOT_KEYS: &[&str] = &["version", "routing", "domain", "hosts", "subdomains"];
const DOMAIN_KEYS: &[&str] = &["domain", "hosts", "subdomains"];
const HOST_KEYS: &[&str] = &["name", "address"];
const ROUTING_KEYS: &[&str] = &["cross_branch", "revert_after"];

/// A domain or host accepted so far, to be built once the whole file proved valid.
struct PlannedDomain {
    name: DomainName,
    parent: usize,
    hosts: Vec<(HostName, Option<String>)>,
}

struct Checker<'a> {
    file: &'a str,
    errors: Vec<TopologyError>,
    /// Domain name -> line of its first definition.
    domains_seen: HashMap<String, usize>,
    /// Host name -> (its domain, line of its first entry).
    hosts_seen: HashMap<String, (String, usize)>,
    plan: Vec<PlannedDomain>,
}

pub(crate) fn parse_topology(file: &str, text: &str) -> Result<Topology, TopologyErrors> {
    let one = |line: usize, column: usize, message: String| {
        TopologyErrors(vec![TopologyError {
            file: file.to_owned(),
            line,
            column,
            message,
        }])
    };
    if text.len() > MAX_FILE_BYTES {
        return Err(one(
            1,
            1,
            format!(
                "file is {} bytes, over the limit of {MAX_FILE_BYTES} bytes (MAX_FILE_BYTES); split the fleet or trim the file",
                text.len()
            ),
        ));
    }
    if is_blank(text) {
        return Err(one(
            1,
            1,
            "file is empty; a topology needs at least `version: 1` and `domain: NAME`".to_owned(),
        ));
    }
    let root = match crate::node::read(text) {
        Ok(Some(n)) => n,
        Ok(None) => {
            return Err(one(
                1,
                1,
                "file is empty; a topology needs at least `version: 1` and `domain: NAME`"
                    .to_owned(),
            ))
        }
        Err(e) => return Err(one(e.line, e.column, e.message)),
    };
    let mut c = Checker {
        file,
        errors: Vec::new(),
        domains_seen: HashMap::new(),
        hosts_seen: HashMap::new(),
        plan: Vec::new(),
    };
    let routing = c.check_root(&root);
    drop(root);
    if !c.errors.is_empty() {
        let mut errors = c.errors;
        errors.sort_by_key(|e| (e.line, e.column));
        return Err(TopologyErrors(errors));
    }
    let mut plan = c.plan.into_iter();
    let Some(root_plan) = plan.next() else {
        return Err(one(
            1,
            1,
            "file defines no root domain; add `domain: NAME`".to_owned(),
        ));
    };
    let mut b = TopologyBuilder::new(root_plan.name);
    b.routing(routing);
    let mut ids = vec![DomainId(0)];
    let mut pending_hosts = vec![(DomainId(0), root_plan.hosts)];
    for d in plan {
        // Checked above: unique names, depth within MAX_DEPTH, parents planned first.
        let id = b
            .add_domain(d.name, ids[d.parent])
            .map_err(|m| one(1, 1, m))?;
        ids.push(id);
        pending_hosts.push((id, d.hosts));
    }
    for (id, hosts) in pending_hosts {
        for (h, addr) in hosts {
            b.add_host(h, id, addr).map_err(|m| one(1, 1, m))?;
        }
    }
    Ok(b.build())
}

/// True when the text holds nothing but whitespace, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---" || t == "..."
    })
}

/// Closest allowed key, for "did you mean" hints on typos.
fn suggestion(key: &str, allowed: &'static [&'static str]) -> Option<&'static str> {
    fn dist(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1; b.len() + 1];
            for (j, cb) in b.iter().enumerate() {
                cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1);
            }
            prev = cur;
        }
        prev[b.len()]
    }
    let key = key.to_ascii_lowercase();
    allowed
        .iter()
        .map(|a| (dist(&key, a), *a))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, a)| a)
}

impl Checker<'_> {
    fn err(&mut self, node: &Node, message: String) {
        self.errors.push(TopologyError {
            file: self.file.to_owned(),
            line: node.line,
            column: node.column,
            message,
        });
    }

    /// The entries of a map with unknown and duplicate keys reported; each key's first
    /// occurrence is returned.
    fn keys<'n>(
        &mut self,
        map: &'n [(Node, Node)],
        allowed: &'static [&'static str],
        context: &str,
    ) -> HashMap<&'static str, (&'n Node, &'n Node)> {
        let mut found: HashMap<&'static str, (&Node, &Node)> = HashMap::new();
        for (k, v) in map {
            let Some(key) = k.text() else {
                self.err(
                    k,
                    format!(
                        "a key {context} must be a plain word, found {}; allowed keys are {}",
                        k.kind(),
                        allowed.join(", ")
                    ),
                );
                continue;
            };
            let Some(&known) = allowed.iter().find(|a| **a == key) else {
                let hint = suggestion(key, allowed)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                self.err(
                    k,
                    format!(
                        "unknown key {key:?} {context}{hint}; allowed keys are {}",
                        allowed.join(", ")
                    ),
                );
                continue;
            };
            if let Some((first, _)) = found.get(known) {
                let line = first.line;
                self.err(k, format!("duplicate key {known:?} {context} (first at line {line}); a key may appear once per map, merge the two entries"));
                continue;
            }
            found.insert(known, (k, v));
        }
        found
    }

    /// A name from a scalar node, checked against the name rules (docs/topology.md).
    fn name(&mut self, node: &Node, kind: NameKind, what: &str) -> Option<String> {
        let Some(text) = node.as_string().map(str::to_owned) else {
            let hint = match node.text() {
                Some(t) if !node.is_null() => {
                    format!("; quote it if it is meant as a name: \"{t}\"")
                }
                _ => String::new(),
            };
            self.err(
                node,
                format!("{what} must be a name, found {}{hint}", node.kind()),
            );
            return None;
        };
        if !is_valid_name(&text) {
            let e = NameError { kind, name: text };
            self.err(node, format!("{e}; rename it"));
            return None;
        }
        Some(text)
    }

    fn check_root(&mut self, root: &Node) -> RoutingPolicy {
        let Value::Map(map) = &root.value else {
            let found = root.kind();
            self.err(root, format!("expected a map with the keys {} at the top of the file, found {found}; start the file with `version: 1`", ROOT_KEYS.join(", ")));
            return RoutingPolicy::default();
        };
        let keys = self.keys(map, ROOT_KEYS, "at the top level");
        match keys.get("version") {
            None => self.err(root, "missing `version`; add `version: 1` at the top of the file".to_owned()),
            Some((_, v)) => match v.as_int() {
                Some(1) => {}
                Some(n) => self.err(v, format!("unsupported version {n}; this program reads topology files of version 1, write `version: 1`")),
                None => {
                    let found = match v.text() {
                        Some(t) => format!("{} {t:?}", v.kind()),
                        None => v.kind().to_owned(),
                    };
                    self.err(v, format!("`version` must be the number 1, found {found}; write `version: 1`"));
                }
            },
        }
        let routing = match keys.get("routing") {
            Some((_, v)) => self.check_routing(v),
            None => RoutingPolicy::default(),
        };
        match keys.get("domain") {
            None => self.err(
                root,
                "missing `domain`: the root domain's name; add `domain: NAME`".to_owned(),
            ),
            Some((_, _)) => self.check_domain(map, &keys, None, 0),
        }
        routing
    }

    fn check_routing(&mut self, node: &Node) -> RoutingPolicy {
        let mut policy = RoutingPolicy::default();
        let map = match &node.value {
            Value::Map(m) => m,
            _ if node.is_null() => return policy,
            _ => {
                self.err(
                    node,
                    format!(
                        "`routing` must be a map with the keys {}, found {}",
                        ROUTING_KEYS.join(", "),
                        node.kind()
                    ),
                );
                return policy;
            }
        };
        let keys = self.keys(map, ROUTING_KEYS, "in `routing`");
        if let Some((_, v)) = keys.get("cross_branch") {
            match v.as_bool() {
                Some(b) => policy.cross_branch = b,
                None => self.err(
                    v,
                    format!("`cross_branch` must be true or false, found {}", v.kind()),
                ),
            }
        }
        if let Some((_, v)) = keys.get("revert_after") {
            match v.text().filter(|_| !v.is_null()) {
                None => self.err(
                    v,
                    format!(
                        "`revert_after` must be a duration such as 5s, found {}",
                        v.kind()
                    ),
                ),
                Some(t) => match RevertAfter::parse(t) {
                    Ok(r) => policy.revert_after = r,
                    Err(e) => self.err(v, format!("`revert_after`: {e}")),
                },
            }
        }
        policy
    }

    /// Checks one domain map (the root or a subdomain entry) and, recursively, its subdomains.
    /// Recursion depth is bounded: the parser's budget caps YAML nesting and domains deeper
    /// than MAX_DEPTH are not descended into.
    fn check_domain(
        &mut self,
        _map: &[(Node, Node)],
        keys: &HashMap<&'static str, (&Node, &Node)>,
        parent: Option<usize>,
        depth: usize,
    ) {
        let (_, name_node) = keys["domain"];
        let name = self.name(name_node, NameKind::Domain, "`domain`");
        let raw_name = name_node.text().unwrap_or("?").to_owned();
        let context = match &name {
            Some(n) => format!("domain {n:?}"),
            None => "this domain".to_owned(),
        };
        let mut index = None;
        if let Some(n) = &name {
            if let Some(&line) = self.domains_seen.get(n) {
                self.err(name_node, format!("domain {n:?} is already defined (line {line}); domain names are unique in the tree, rename one"));
            } else if depth > MAX_DEPTH {
                self.err(name_node, format!("domain {n:?} is nested {depth} levels below the root; the limit is {MAX_DEPTH} (MAX_DEPTH), flatten the tree"));
                return;
            } else {
                self.domains_seen.insert(n.clone(), name_node.line);
                index = Some(self.plan.len());
                self.plan.push(PlannedDomain {
                    name: DomainName::new(n.as_str()).expect("checked above"),
                    parent: parent.unwrap_or(0),
                    hosts: Vec::new(),
                });
            }
        }
        if let Some((_, hosts)) = keys.get("hosts") {
            match &hosts.value {
                _ if hosts.is_null() => {}
                Value::Seq(items) => {
                    for item in items {
                        self.check_host(item, &raw_name, index);
                    }
                }
                _ => self.err(hosts, format!("`hosts` of {context} must be a list of host names or {{name, address}} maps, found {}", hosts.kind())),
            }
        }
        if let Some((_, subs)) = keys.get("subdomains") {
            match &subs.value {
                _ if subs.is_null() => {}
                Value::Seq(items) => {
                    for item in items {
                        let Value::Map(m) = &item.value else {
                            self.err(item, format!("each entry of `subdomains` of {context} must be a map with the keys {}, found {}", DOMAIN_KEYS.join(", "), item.kind()));
                            continue;
                        };
                        let ctx = format!("in a subdomain entry of {context}");
                        let sub_keys = self.keys(m, DOMAIN_KEYS, &ctx);
                        if !sub_keys.contains_key("domain") {
                            self.err(item, format!("subdomain entry of {context} has no `domain` key; add `domain: NAME`"));
                            continue;
                        }
                        // A subdomain under an invalid parent is still checked, attached to
                        // the root of the plan; the file fails anyway.
                        self.check_domain(m, &sub_keys, index.or(Some(0)), depth + 1);
                    }
                }
                _ => self.err(subs, format!("`subdomains` of {context} must be a list of maps with the keys {}, found {}", DOMAIN_KEYS.join(", "), subs.kind())),
            }
        }
    }

    fn check_host(&mut self, item: &Node, domain: &str, index: Option<usize>) {
        let (name_node, address) = match &item.value {
            Value::Map(m) => {
                let keys = self.keys(m, HOST_KEYS, "in a host entry");
                let Some((_, n)) = keys.get("name") else {
                    self.err(item, "host entry has no `name` key; write the host as `- NAME` or `- {name: NAME, address: ADDR}`".to_owned());
                    return;
                };
                let address = match keys.get("address") {
                    None => None,
                    Some((_, a)) => match a.as_string() {
                        Some(t) => Some(t.to_owned()),
                        _ => {
                            self.err(
                                a,
                                format!(
                                    "`address` must be text such as 10.0.4.4, found {}",
                                    a.kind()
                                ),
                            );
                            return;
                        }
                    },
                };
                (*n, address)
            }
            Value::Seq(_) => {
                self.err(
                    item,
                    "a host entry must be a name or a map {name, address}, found a list".to_owned(),
                );
                return;
            }
            _ => (item, None),
        };
        let Some(name) = self.name(name_node, NameKind::Host, "a host entry") else {
            return;
        };
        if let Some((d, line)) = self.hosts_seen.get(&name) {
            let msg = format!("host {name:?} is already in domain {d:?} (line {line}); a host belongs to exactly one domain");
            self.err(name_node, msg);
            return;
        }
        self.hosts_seen
            .insert(name.clone(), (domain.to_owned(), name_node.line));
        if let Some(i) = index {
            self.plan[i]
                .hosts
                .push((HostName::new(name).expect("checked above"), address));
        }
    }
}
