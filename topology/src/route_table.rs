//! The route table: every host's route prefix for every manager type, built once per
//! registry revision so that a lookup is a map access.

use std::collections::HashMap;

use crate::names::{HostName, PackageType};
use crate::route::explain;
use crate::snapshot::RegistrySnapshot;
use crate::tree::Topology;

/// How many hosts of each route the table keeps: the chosen one and the next in line.
pub const ROUTE_PREFIX_LEN: usize = 3;

/// Chosen manager and the next few in line, per (host, type).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    types: Vec<PackageType>,
    routes: HashMap<(HostName, PackageType), Vec<HostName>>,
}

impl RouteTable {
    /// Computes every route of every host of the topology for every type in the snapshot.
    pub fn build(topology: &Topology, snapshot: &RegistrySnapshot) -> RouteTable {
        let mut t = RouteTable { types: snapshot.package_types(), routes: HashMap::new() };
        for ty in t.types.clone() {
            t.update_type(topology, snapshot, ty.as_str());
        }
        t
    }

    /// The chosen manager of `host` for `package_type`.
    pub fn chosen(&self, host: &str, package_type: &str) -> Option<&HostName> {
        self.route(host, package_type).and_then(|r| r.first())
    }

    /// The chosen manager and the next few in line: a prefix of the full route.
    pub fn route(&self, host: &str, package_type: &str) -> Option<&[HostName]> {
        let h = HostName::new(host).ok()?;
        let t = PackageType::new(package_type).ok()?;
        self.routes.get(&(h, t)).map(|v| v.as_slice())
    }

    /// Recomputes the routes of one type only (after status changes of that type).
    pub fn update_type(&mut self, topology: &Topology, snapshot: &RegistrySnapshot, package_type: &str) {
        let Ok(ty) = PackageType::new(package_type) else { return };
        self.routes.retain(|k, _| k.1 != ty);
        if !self.types.contains(&ty) {
            self.types.push(ty.clone());
            self.types.sort();
        }
        for h in topology.hosts() {
            if let Ok(e) = explain(topology, snapshot, h.name.as_str(), package_type, &|_| false) {
                let mut r = e.route;
                r.truncate(ROUTE_PREFIX_LEN);
                if !r.is_empty() {
                    self.routes.insert((h.name.clone(), ty.clone()), r);
                }
            }
        }
    }

    /// The types the table holds routes for.
    pub fn package_types(&self) -> impl Iterator<Item = &PackageType> {
        self.types.iter()
    }
}
