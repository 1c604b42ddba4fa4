//! The chaos network: a fault-injecting TCP proxy in front of every
//! listener of the cluster (control nodes and agents' data planes), driven
//! by the nemesis.
//!
//! Each component advertises its proxy's address and dials from its own
//! loopback address (`--source-ip`): node `i` from 127.0.1.i, the `k`-th
//! agent from 127.0.2.k; anything else (the workload's clients, the
//! checker) is a client and is never faulted. A connection from `a` to `b`
//! carries `a -> b` bytes under the rule of the link `(a, b)` and the
//! replies under the rule of `(b, a)`, so one-way faults are one-way:
//!
//! - `Stall`: bytes are held, not delivered, until the rule changes (a
//!   partition; TCP delivers what was in flight once it heals);
//! - `Drop`: connections are reset and new ones closed at once;
//! - `Delay(ms)`: every chunk waits that long.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_testkit::{Fronting, Peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What happens to the bytes of one direction of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Pass,
    Stall,
    Drop,
    Delay(Duration),
}

/// The rules in force, by directed link `(from, to)`; absent is `Pass`.
pub type Rules = BTreeMap<(Peer, Peer), Rule>;

/// A handle on the proxies; clones share them.
#[derive(Clone)]
pub struct ChaosNet {
    rules: Arc<watch::Sender<Rules>>,
    /// Which component each source address is.
    sources: Arc<Mutex<BTreeMap<IpAddr, Peer>>>,
}

impl Default for ChaosNet {
    fn default() -> Self {
        Self {
            rules: Arc::new(watch::Sender::new(Rules::new())),
            sources: Arc::default(),
        }
    }
}

impl ChaosNet {
    /// Replaces the rules in force.
    pub fn set(&self, rules: Rules) {
        self.rules.send_replace(rules);
    }

    /// Every link passes again.
    pub fn heal(&self) {
        self.set(Rules::new());
    }

    fn source_of(&self, ip: IpAddr) -> Option<Peer> {
        self.sources.lock().ok()?.get(&ip).cloned()
    }

    fn address_of(&self, peer: &Peer) -> IpAddr {
        let mut sources = match self.sources.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((ip, _)) = sources.iter().find(|(_, p)| *p == peer) {
            return *ip;
        }
        let ip = match peer {
            Peer::Node(id) => Ipv4Addr::new(127, 0, 1, (*id).clamp(1, 254) as u8),
            Peer::Agent(_) => {
                let agents = sources
                    .values()
                    .filter(|p| matches!(p, Peer::Agent(_)))
                    .count();
                Ipv4Addr::new(127, 0, 2, (agents + 1).min(254) as u8)
            }
        };
        sources.insert(IpAddr::V4(ip), peer.clone());
        IpAddr::V4(ip)
    }
}

impl Fronting for ChaosNet {
    fn front(&mut self, peer: &Peer, real: &str) -> anyhow::Result<String> {
        self.address_of(peer);
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let front = listener.local_addr()?.to_string();
        let listener = TcpListener::from_std(listener)?;
        let real: SocketAddr = real.parse()?;
        tokio::spawn(serve(self.clone(), listener, peer.clone(), real));
        Ok(front)
    }

    fn source_ip(&self, peer: &Peer) -> Option<IpAddr> {
        Some(self.address_of(peer))
    }
}

/// Accepts connections to `to` and relays them to its real address.
async fn serve(net: ChaosNet, listener: TcpListener, to: Peer, real: SocketAddr) {
    loop {
        let Ok((conn, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let from = net.source_of(from.ip());
        let links = from.map(|from| ((from.clone(), to.clone()), (to.clone(), from)));
        tokio::spawn(relay(conn, real, links, net.rules.subscribe()));
    }
}

/// One relayed connection, until either side closes or a rule drops it.
async fn relay(
    conn: TcpStream,
    real: SocketAddr,
    links: Option<((Peer, Peer), (Peer, Peer))>,
    rules: watch::Receiver<Rules>,
) {
    let rule = |link: &Option<(Peer, Peer)>| {
        link.as_ref()
            .and_then(|l| rules.borrow().get(l).copied())
            .unwrap_or(Rule::Pass)
    };
    let (out, back) = match links {
        Some((out, back)) => (Some(out), Some(back)),
        None => (None, None),
    };
    if rule(&out) == Rule::Drop || rule(&back) == Rule::Drop {
        return;
    }
    let Ok(Ok(upstream)) =
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(real)).await
    else {
        return;
    };
    let _ = conn.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (down_read, down_write) = conn.into_split();
    let (up_read, up_write) = upstream.into_split();
    tokio::select! {
        _ = pump(down_read, up_write, out.clone(), rules.clone()) => {}
        _ = pump(up_read, down_write, back.clone(), rules.clone()) => {}
        _ = dropped(rules.clone(), out, back) => {}
    }
}

/// Copies `from` to `to` under the rule of `link`.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    link: Option<(Peer, Peer)>,
    mut rules: watch::Receiver<Rules>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let rule = link
                .as_ref()
                .and_then(|l| rules.borrow_and_update().get(l).copied())
                .unwrap_or(Rule::Pass);
            match rule {
                Rule::Pass => break,
                Rule::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Rule::Drop => return,
                Rule::Stall => {
                    if rules.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Resolves when a rule drops either direction of the connection.
async fn dropped(
    mut rules: watch::Receiver<Rules>,
    out: Option<(Peer, Peer)>,
    back: Option<(Peer, Peer)>,
) {
    if out.is_none() {
        return std::future::pending().await;
    }
    loop {
        {
            let now = rules.borrow_and_update();
            let drop = [&out, &back]
                .into_iter()
                .flatten()
                .any(|l| now.get(l) == Some(&Rule::Drop));
            if drop {
                return;
            }
        }
        if rules.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Every link between `a` and `b` (both ways) under `rule`.
pub fn between(rules: &mut Rules, a: &[Peer], b: &[Peer], rule: Rule) {
    for x in a {
        for y in b.iter().filter(|y| *y != x) {
            rules.insert((x.clone(), y.clone()), rule);
            rules.insert((y.clone(), x.clone()), rule);
        }
    }
}

/// Only the bytes from `from` to each of `to` under `rule`.
pub fn one_way(rules: &mut Rules, from: &Peer, to: &[Peer], rule: Rule) {
    for y in to.iter().filter(|y| *y != from) {
        rules.insert((from.clone(), y.clone()), rule);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; returns its address.
    async fn echo() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = c.read(&mut buf).await {
                        if n == 0 || c.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn dial_from(ip: IpAddr, addr: &str) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
        socket.connect(addr.parse().unwrap()).await.unwrap()
    }

    async fn round_trip(c: &mut TcpStream, within: Duration) -> bool {
        let ok = async {
            c.write_all(b"ping").await?;
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(&buf == b"ping")
        };
        matches!(tokio::time::timeout(within, ok).await, Ok(Ok(true)))
    }

    #[tokio::test]
    async fn rules_stall_heal_and_drop_one_link_only() {
        let mut net = ChaosNet::default();
        let b = Peer::Node(2);
        let front = net.front(&b, &echo().await).unwrap();
        let a_ip = net.source_ip(&Peer::Node(1)).unwrap();
        let c_ip = net.source_ip(&Peer::Node(3)).unwrap();
        assert_ne!(a_ip, c_ip);
        let mut a = dial_from(a_ip, &front).await;
        let mut c = dial_from(c_ip, &front).await;
        assert!(round_trip(&mut a, Duration::from_secs(2)).await);

        // One way: the replies from 2 to 1 are held; 3 is not affected.
        net.set(Rules::from([((b.clone(), Peer::Node(1)), Rule::Stall)]));
        assert!(!round_trip(&mut a, Duration::from_millis(300)).await);
        assert!(round_trip(&mut c, Duration::from_secs(2)).await);
        // Healed: what was held arrives, in order.
        net.heal();
        let mut buf = [0u8; 8];
        a.read_exact(&mut buf[..4]).await.unwrap();
        assert_eq!(&buf[..4], b"ping");
        assert!(round_trip(&mut a, Duration::from_secs(2)).await);

        // Drop resets the open connection and refuses new ones.
        net.set(Rules::from([((Peer::Node(1), b.clone()), Rule::Drop)]));
        let n = tokio::time::timeout(Duration::from_secs(2), a.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        let mut again = dial_from(a_ip, &front).await;
        assert!(!round_trip(&mut again, Duration::from_millis(500)).await);
        net.heal();
        let mut fresh = dial_from(a_ip, &front).await;
        assert!(round_trip(&mut fresh, Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn clients_are_never_faulted() {
        let mut net = ChaosNet::default();
        let front = net.front(&Peer::Node(1), &echo().await).unwrap();
        net.set(Rules::from([
            ((Peer::Node(1), Peer::Node(2)), Rule::Stall),
            ((Peer::Node(2), Peer::Node(1)), Rule::Drop),
        ]));
        let mut client = TcpStream::connect(front.as_str()).await.unwrap();
        assert!(round_trip(&mut client, Duration::from_secs(2)).await);
    }
}
