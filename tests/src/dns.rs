//! A small authoritative DNS server on loopback (UDP) for the SRV bootstrap tests: it answers
//! SRV questions from a table the test can change while it runs, and `NXDOMAIN` otherwise.
//! Messages are encoded and decoded with hickory's protocol types, so agents meet a real DNS
//! exchange over a real socket.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::SRV;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

/// One SRV record: priority, weight, port, target host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

type Table = Arc<Mutex<HashMap<String, Vec<SrvRecord>>>>;

/// The server; stopped and joined on drop.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    table: Table,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Time to live of every answer: short, so a changed record is seen within a second.
pub const TTL_SECS: u32 = 1;

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    /// Starts serving on a free loopback UDP port.
    pub fn start() -> anyhow::Result<DnsServer> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let addr = socket.local_addr()?;
        let table: Table = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (table, stop) = (table.clone(), stop.clone());
            std::thread::Builder::new()
                .name("test-dns".into())
                .spawn(move || serve(&socket, &table, &stop))?
        };
        Ok(DnsServer {
            addr,
            table,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens, for an agent's `dns_servers`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the SRV records of `name` (empty: the name no longer exists).
    pub fn set_srv(&self, name: &str, records: Vec<SrvRecord>) {
        let mut t = self.table.lock().expect("dns table");
        if records.is_empty() {
            t.remove(&key(name));
        } else {
            t.insert(key(name), records);
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: &UdpSocket, table: &Table, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if let Some(bytes) = answer(&query, table).and_then(|m| m.to_vec().ok()) {
            let _ = socket.send_to(&bytes, from);
        }
    }
}

fn answer(query: &Message, table: &Table) -> Option<Message> {
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.queries = query.queries.clone();
    let q = query.queries.first()?;
    let records = table
        .lock()
        .expect("dns table")
        .get(&key(&q.name().to_ascii()))
        .cloned();
    match records {
        None => reply.metadata.response_code = ResponseCode::NXDomain,
        Some(records) if q.query_type() == RecordType::SRV => {
            for r in records {
                let target = Name::from_ascii(format!("{}.", key(&r.target))).ok()?;
                reply.answers.push(Record::from_rdata(
                    q.name().clone(),
                    TTL_SECS,
                    RData::SRV(SRV::new(r.priority, r.weight, r.port, target)),
                ));
            }
        }
        // The name exists but has no record of this type: an empty answer (NODATA).
        Some(_) => {}
    }
    Some(reply)
}
