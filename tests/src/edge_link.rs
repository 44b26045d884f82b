//! A fault-injecting TCP proxy standing for the edge link between the agent
//! and the Kafka broker. The broker advertises the proxy's port, so every
//! client byte crosses it, and a test can pull the cable (`Blackhole`), take
//! the host down (`Refuse`), add latency, or reset long-lived connections.
//!
//! Plain std threads: one acceptor, four per connection (a reader and a
//! delayed writer per direction). Every blocking call has a short timeout
//! (`TICK`) so threads notice state changes and shutdown without spinning.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a blocked thread waits before re-checking state and shutdown.
const TICK: Duration = Duration::from_millis(50);

/// A TCP proxy on 127.0.0.1:`listen_port` forwarding to `upstream` (host:port).
pub struct EdgeLink {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Bytes flow both ways (with the configured latency).
    Up,
    /// A cable pulled somewhere upstream: existing connections stay open but
    /// no byte passes in either direction. Nothing is held: bytes read (or
    /// due for delivery) during Blackhole are dropped, like packets into a
    /// black hole. New connections are accepted but nothing is forwarded.
    Blackhole,
    /// Broker host down: every existing connection is reset (SO_LINGER 0, so
    /// the peer sees RST); new connections are accepted and reset at once.
    Refuse,
}

/// The knobs a test turns; read afresh by every thread on every chunk/tick.
#[derive(Clone, Copy)]
struct Cfg {
    state: LinkState,
    latency: Duration,
    reset_after: Option<Duration>,
}

struct Shared {
    upstream: String,
    cfg: Mutex<Cfg>,
    stop: AtomicBool,
    connections: AtomicU64,
    resets: AtomicU64,
}

/// A panicking test thread must not wedge the proxy: ignore poisoning.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EdgeLink {
    /// Binds the port (panics naming it if it is taken: two links, or a
    /// leftover process, would silently split the traffic), starts the
    /// forwarding threads, state Up.
    pub fn start(listen_port: u16, upstream: &str) -> EdgeLink {
        let listener = TcpListener::bind(("127.0.0.1", listen_port)).unwrap_or_else(|e| {
            panic!("EdgeLink cannot bind 127.0.0.1:{listen_port} (port taken?): {e}")
        });
        // Non-blocking so the acceptor can notice shutdown between accepts.
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            cfg: Mutex::new(Cfg {
                state: LinkState::Up,
                latency: Duration::ZERO,
                reset_after: None,
            }),
            stop: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        });
        let s = shared.clone();
        let acceptor = thread::spawn(move || accept_loop(listener, s));
        EdgeLink {
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Switches the link; existing connections notice within ~`TICK`.
    pub fn set_state(&self, state: LinkState) {
        lock(&self.shared.cfg).state = state;
    }

    /// Adds one-way `latency` to every chunk forwarded in each direction
    /// (0 = none), for data arriving after the call. Chunks are queued with a
    /// delivery time, so order is kept and throughput is not one chunk per
    /// latency period.
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.cfg).latency = latency;
    }

    /// When Some(d): every connection is reset (RST) once it has been open
    /// for d and has carried data, as flaky NATs and load balancers do; new
    /// connections keep coming. None disables.
    pub fn set_reset_after(&self, after: Option<Duration>) {
        lock(&self.shared.cfg).reset_after = after;
    }

    /// Number of client connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(SeqCst)
    }

    /// Number of connections the proxy reset (Refuse, reset_after, or an
    /// unreachable upstream).
    pub fn resets(&self) -> u64 {
        self.shared.resets.load(SeqCst)
    }
}

impl Drop for EdgeLink {
    /// Stops accepting, closes every connection and joins all threads, so the
    /// port is free for the next test when this returns.
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Makes the coming close() send RST instead of FIN.
fn set_linger_zero(stream: &TcpStream) {
    use libc::{linger, setsockopt, socklen_t, SOL_SOCKET, SO_LINGER};
    let on = linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let (fd, size) = (stream.as_raw_fd(), size_of::<linger>() as socklen_t);
    let ptr = (&on as *const linger).cast();
    // SAFETY: a valid fd owned by `stream` and a correctly sized option value.
    unsafe { setsockopt(fd, SOL_SOCKET, SO_LINGER, ptr, size) };
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                shared.connections.fetch_add(1, SeqCst);
                if lock(&shared.cfg).state == LinkState::Refuse {
                    set_linger_zero(&client);
                    shared.resets.fetch_add(1, SeqCst);
                    continue; // `client` is dropped here: RST.
                }
                let s = shared.clone();
                conns.retain(|h| !h.is_finished());
                conns.push(thread::spawn(move || run_conn(client, s)));
            }
            Err(_) => thread::sleep(TICK / 2), // WouldBlock, or a transient error.
        }
    }
    drop(listener); // Release the port before waiting for connections.
    for h in conns {
        let _ = h.join();
    }
}

type Chunk = (Instant, Option<Vec<u8>>); // (deliver at, data or None = EOF)

/// One direction's queue between its reader and its delayed writer.
#[derive(Default)]
struct Pipe {
    queue: Mutex<VecDeque<Chunk>>,
    ready: Condvar,
}

struct Conn {
    shared: Arc<Shared>,
    client: TcpStream,
    upstream: TcpStream,
    opened: Instant,
    carried: AtomicBool,
    dead: AtomicBool,
}

impl Conn {
    fn gone(&self) -> bool {
        self.dead.load(SeqCst) || self.shared.stop.load(SeqCst)
    }
    /// Ends the connection; the sockets close (FIN) when all threads are out.
    fn close(&self) {
        self.dead.store(true, SeqCst);
    }
    /// Ends the connection with RST on both sides, counted once. The sockets
    /// outlive this call (run_conn owns them until every thread is out), so
    /// linger is set before they close.
    fn reset(&self) {
        if !self.dead.swap(true, SeqCst) {
            set_linger_zero(&self.client);
            set_linger_zero(&self.upstream);
            self.shared.resets.fetch_add(1, SeqCst);
        }
    }
}

fn run_conn(client: TcpStream, shared: Arc<Shared>) {
    let upstream = (shared.upstream.to_socket_addrs().ok())
        .and_then(|mut addrs| addrs.next())
        .and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok());
    let Some(upstream) = upstream else {
        set_linger_zero(&client);
        shared.resets.fetch_add(1, SeqCst);
        return;
    };
    for s in [&client, &upstream] {
        let _ = s.set_nonblocking(false);
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(TICK));
        let _ = s.set_write_timeout(Some(TICK));
    }
    let conn = Conn {
        shared,
        client,
        upstream,
        opened: Instant::now(),
        carried: AtomicBool::new(false),
        dead: AtomicBool::new(false),
    };
    let (c, u, conn) = (&conn.client, &conn.upstream, &conn);
    let [to_upstream, to_client] = [Pipe::default(), Pipe::default()];
    thread::scope(|s| {
        s.spawn(|| read_side(conn, c, &to_upstream));
        s.spawn(|| read_side(conn, u, &to_client));
        s.spawn(|| write_side(conn, u, &to_upstream));
        write_side(conn, c, &to_client);
    });
    // `conn` drops after this, closing both sockets (RST if reset() ran).
}

fn transient(e: &std::io::Error) -> bool {
    use ErrorKind::*;
    matches!(e.kind(), WouldBlock | TimedOut | Interrupted)
}

/// Reads one side, applying the faults, and queues chunks for the writer.
fn read_side(conn: &Conn, mut from: &TcpStream, pipe: &Pipe) {
    let mut buf = vec![0u8; 64 * 1024];
    while !conn.gone() {
        let cfg = *lock(&conn.shared.cfg);
        let expired = cfg.reset_after.is_some_and(|d| conn.opened.elapsed() >= d);
        if cfg.state == LinkState::Refuse || (expired && conn.carried.load(SeqCst)) {
            return conn.reset();
        }
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e) if transient(&e) => continue,
            Err(_) => return conn.close(),
        };
        let cfg = *lock(&conn.shared.cfg); // The state may have changed meanwhile.
        if n > 0 && cfg.state != LinkState::Up {
            continue; // Into the black hole (or about to be reset).
        }
        conn.carried.fetch_or(n > 0, SeqCst);
        let data = (n > 0).then(|| buf[..n].to_vec());
        lock(&pipe.queue).push_back((Instant::now() + cfg.latency, data));
        pipe.ready.notify_one();
        if n == 0 {
            return; // EOF queued: the writer half-closes the other side.
        }
    }
}

/// Delivers one direction's chunks in order, each no earlier than its time.
fn write_side(conn: &Conn, mut to: &TcpStream, pipe: &Pipe) {
    loop {
        let mut queue = lock(&pipe.queue);
        let (at, data) = loop {
            if conn.gone() {
                return;
            }
            if let Some(chunk) = queue.pop_front() {
                break chunk;
            }
            queue = pipe
                .ready
                .wait_timeout(queue, TICK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        drop(queue);
        while Instant::now() < at && !conn.gone() {
            thread::sleep(at.saturating_duration_since(Instant::now()).min(TICK));
        }
        let Some(mut data) = data.as_deref() else {
            let _ = to.shutdown(Shutdown::Write);
            return;
        };
        if lock(&conn.shared.cfg).state == LinkState::Blackhole {
            continue; // In flight when the cable was pulled: lost.
        }
        while !data.is_empty() && !conn.gone() {
            match to.write(data) {
                Ok(n) if n > 0 => data = &data[n..],
                Err(e) if transient(&e) => {}
                _ => return conn.close(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = std::io::copy(&mut r, &mut s);
                });
            }
        });
        addr
    }

    /// A proxy on a port that was free a moment ago, in front of an echo server.
    fn link() -> (EdgeLink, u16) {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        (EdgeLink::start(port, &echo_server()), port)
    }

    fn ms(since: Instant) -> u128 {
        since.elapsed().as_millis()
    }

    fn dial(port: u16) -> TcpStream {
        TcpStream::connect(("127.0.0.1", port)).unwrap()
    }

    fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(msg).unwrap();
        let mut got = vec![0; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }

    /// One read waiting at most `ms`: what arrived, or how it failed.
    fn read_within(s: &mut TcpStream, ms: u64) -> Result<usize, ErrorKind> {
        s.set_read_timeout(Some(Duration::from_millis(ms))).unwrap();
        s.read(&mut [0; 64]).map_err(|e| e.kind())
    }

    fn expect_silence(s: &mut TcpStream) {
        let r = read_within(s, 300);
        assert!(matches!(r, Err(ErrorKind::WouldBlock)), "{r:?}");
    }

    /// Reads until the proxy's RST arrives; returns when it did.
    fn expect_reset(s: &mut TcpStream) -> Instant {
        assert_eq!(read_within(s, 3000), Err(ErrorKind::ConnectionReset));
        Instant::now()
    }

    #[test]
    fn up_forwards_both_ways_and_drop_frees_the_port() {
        let (link, port) = link();
        let mut s = dial(port);
        roundtrip(&mut s, b"hello");
        let big: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
        let mut w = s.try_clone().unwrap();
        let sent = big.clone();
        let writer = thread::spawn(move || w.write_all(&sent).unwrap());
        let mut got = vec![0; big.len()];
        s.read_exact(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == big, "512 KiB came back altered");
        assert_eq!((link.connections(), link.resets()), (1, 0));
        drop(link); // With `s` still open: the port must be free anyway.
        let _relinked = EdgeLink::start(port, &echo_server());
        roundtrip(&mut dial(port), b"again");
        drop(s);
    }

    #[test]
    fn blackhole_drops_bytes_and_up_recovers() {
        let (link, port) = link();
        let mut old = dial(port);
        roundtrip(&mut old, b"one");
        link.set_state(LinkState::Blackhole);
        old.write_all(b"lost").unwrap();
        expect_silence(&mut old);
        let mut during = dial(port);
        during.write_all(b"x").unwrap();
        expect_silence(&mut during);
        link.set_state(LinkState::Up);
        roundtrip(&mut dial(port), b"new");
        roundtrip(&mut old, b"back"); // "lost" was dropped, not held.
        assert_eq!(link.resets(), 0);
    }

    #[test]
    fn refuse_resets_existing_and_new_connections() {
        let (link, port) = link();
        let mut s = dial(port);
        roundtrip(&mut s, b"hi");
        let t = Instant::now();
        link.set_state(LinkState::Refuse);
        assert!(expect_reset(&mut s) - t < Duration::from_secs(1));
        if let Ok(mut fresh) = TcpStream::connect(("127.0.0.1", port)) {
            let r = read_within(&mut fresh, 1000); // EOF or RST, not a timeout.
            assert!(
                matches!(r, Ok(0) | Err(ErrorKind::ConnectionReset)),
                "{r:?}"
            );
        }
        assert_eq!((link.connections(), link.resets()), (2, 2));
    }

    #[test]
    fn latency_delays_each_direction_but_pipelines() {
        let (link, port) = link();
        link.set_latency(Duration::from_millis(200));
        let mut s = dial(port);
        let t = Instant::now();
        roundtrip(&mut s, b"ping");
        assert!(ms(t) >= 400, "round trip took {} ms", ms(t));
        // Ten chunks 30 ms apart: pipelined ~0.7 s; one per latency would be >2 s.
        let t = Instant::now();
        for i in 0..10u8 {
            s.write_all(&[b'0' + i]).unwrap();
            thread::sleep(Duration::from_millis(30));
        }
        let mut got = [0; 10];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"0123456789");
        assert!(ms(t) < 1500, "ten chunks took {} ms", ms(t));
        link.set_latency(Duration::ZERO);
        let t = Instant::now();
        roundtrip(&mut s, b"fast");
        assert!(ms(t) < 150, "zero latency round trip took {} ms", ms(t));
    }

    #[test]
    fn reset_after_resets_connections_that_carried_data() {
        let (link, port) = link();
        link.set_reset_after(Some(Duration::from_millis(300)));
        let opened = Instant::now();
        let mut busy = dial(port);
        let mut idle = dial(port);
        roundtrip(&mut busy, b"data");
        let reset_at = expect_reset(&mut busy) - opened;
        assert!(reset_at >= Duration::from_millis(300), "{reset_at:?}");
        assert!(reset_at < Duration::from_millis(1000), "{reset_at:?}");
        expect_silence(&mut idle); // Open as long, but carried nothing.
        assert_eq!((link.connections(), link.resets()), (2, 1));
        link.set_reset_after(None);
        roundtrip(&mut dial(port), b"fresh");
    }
}
