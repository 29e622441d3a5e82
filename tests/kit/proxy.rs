//! A TCP proxy the test controls, standing between two servers' federation
//! traffic (via `[federation.hosts]`): up (forwards), down (cuts every live
//! connection and refuses new ones), or a black hole (accepts and never
//! answers).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
};

use tokio::{net::TcpListener, task::JoinHandle};

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Forwards both ways.
    Up,
    /// Cuts live connections and closes new ones at once.
    Down,
    /// Accepts and holds connections, forwarding nothing.
    BlackHole,
}

/// The proxy.
pub struct FaultProxy {
    pub addr: SocketAddr,
    link: Arc<AtomicU8>,
    /// Bumped on every change to `Down`/`BlackHole`: live forwards end when it moves.
    epoch: Arc<AtomicU64>,
    held: Arc<Mutex<Vec<tokio::net::TcpStream>>>,
    task: JoinHandle<()>,
}

fn encode(l: Link) -> u8 {
    match l {
        Link::Up => 0,
        Link::Down => 1,
        Link::BlackHole => 2,
    }
}

impl FaultProxy {
    /// Listens on `bind` and forwards to `target` while up.
    pub async fn start(bind: &str, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(bind).await.unwrap_or_else(|e| panic!("binding {bind}: {e}"));
        let addr = listener.local_addr().unwrap();
        let link = Arc::new(AtomicU8::new(0));
        let epoch = Arc::new(AtomicU64::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (l, e, h) = (link.clone(), epoch.clone(), held.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                match l.load(Ordering::SeqCst) {
                    1 => drop(inbound),
                    2 => h.lock().unwrap().push(inbound),
                    _ => {
                        let (e, start) = (e.clone(), e.load(Ordering::SeqCst));
                        tokio::spawn(async move {
                            let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                            let mut inbound = inbound;
                            let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                            let cut = async {
                                while e.load(Ordering::SeqCst) == start {
                                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                                }
                            };
                            tokio::select! {
                                _ = copy => {}
                                _ = cut => {}
                            }
                        });
                    }
                }
            }
        });
        Self { addr, link, epoch, held, task }
    }

    /// Changes what the proxy does; leaving `Up` cuts live connections.
    pub fn set(&self, link: Link) {
        if link != Link::Up {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        if link != Link::BlackHole {
            self.held.lock().unwrap().clear();
        }
        self.link.store(encode(link), Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
