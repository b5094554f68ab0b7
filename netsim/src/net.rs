//! The simulated network: directed blocks (partitions), per-link latency and bandwidth, and
//! connections that behave like QUIC streams: reliable and ordered while they live, dead as
//! a whole once a frame is lost, with both ends told after a detection delay.

use std::collections::BTreeMap;

use rand::RngExt;
use rand_pcg::Pcg64Mcg;

use crate::scenario::{LinkKind, SECOND_US};

pub type ConnId = u64;

/// First redial after a connection died; doubled per failure up to [`REDIAL_MAX_US`]. The
/// node's own backoff (`node/src/net/mod.rs`).
pub const REDIAL_FIRST_US: u64 = SECOND_US;
pub const REDIAL_MAX_US: u64 = 30 * SECOND_US;

/// A connection between two nodes; `a` dialled `b`.
#[derive(Debug, Clone)]
pub struct Conn {
    pub a: usize,
    pub b: usize,
    /// The handshake finished and both ends have a sync session.
    pub open: bool,
    /// Lost a frame or was closed: nothing more is delivered.
    pub dead: bool,
    /// Per direction (0: a to b, 1: b to a): when the sender's link is free again, and when
    /// the last frame arrives (a stream delivers in order).
    wire_free_us: [u64; 2],
    last_arrival_us: [u64; 2],
}

impl Conn {
    pub fn other(&self, node: usize) -> usize {
        if node == self.a { self.b } else { self.a }
    }

    fn direction(&self, from: usize) -> usize {
        usize::from(from != self.a)
    }
}

/// What became of a frame put on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// It arrives at these times (twice when duplicated).
    Arrives(Vec<u64>),
    /// It was lost: the connection is dead from now on.
    Lost,
    /// The connection was dead already.
    Dropped,
}

#[derive(Debug)]
pub struct Network {
    kind: LinkKind,
    loss_ppm: u32,
    duplicate_ppm: u32,
    reorder_ppm: u32,
    /// Directed blocks `(from, to)`, counted: overlapping faults each lift their own.
    blocked: BTreeMap<(usize, usize), u32>,
    conns: BTreeMap<ConnId, Conn>,
    /// The live connection of each pair `(low, high)`, if any.
    pair_conn: BTreeMap<(usize, usize), ConnId>,
    /// The next redial delay of each pair.
    backoff_us: BTreeMap<(usize, usize), u64>,
    next_conn: ConnId,
    pub stats: NetStats,
}

#[derive(Debug, Default, Clone)]
pub struct NetStats {
    pub frames: u64,
    pub bytes: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub connections: u64,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Network {
    pub fn new(kind: LinkKind, loss_ppm: u32, duplicate_ppm: u32, reorder_ppm: u32) -> Network {
        Network {
            kind,
            loss_ppm,
            duplicate_ppm,
            reorder_ppm,
            blocked: BTreeMap::new(),
            conns: BTreeMap::new(),
            pair_conn: BTreeMap::new(),
            backoff_us: BTreeMap::new(),
            next_conn: 1,
            stats: NetStats::default(),
        }
    }

    /// Stops losing, duplicating and reordering frames (the mesh is healed).
    pub fn calm(&mut self) {
        self.loss_ppm = 0;
        self.duplicate_ppm = 0;
        self.reorder_ppm = 0;
    }

    pub fn block(&mut self, from: usize, to: usize) {
        *self.blocked.entry((from, to)).or_default() += 1;
    }

    pub fn unblock(&mut self, from: usize, to: usize) {
        if let Some(count) = self.blocked.get_mut(&(from, to)) {
            *count -= 1;
            if *count == 0 {
                self.blocked.remove(&(from, to));
            }
        }
    }

    pub fn unblock_all(&mut self) {
        self.blocked.clear();
    }

    pub fn is_blocked(&self, from: usize, to: usize) -> bool {
        self.blocked.contains_key(&(from, to))
    }

    /// Either direction between two nodes is blocked.
    pub fn is_cut(&self, a: usize, b: usize) -> bool {
        self.is_blocked(a, b) || self.is_blocked(b, a)
    }

    pub fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(&id)
    }

    pub fn conn_between(&self, a: usize, b: usize) -> Option<ConnId> {
        self.pair_conn.get(&pair(a, b)).copied()
    }

    /// Live connections that touch `node`.
    pub fn conns_of(&self, node: usize) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, conn)| !conn.dead && (conn.a == node || conn.b == node))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Starts a connection from `a` to `b`: the handshake completes after the returned delay,
    /// or `None` when the pair has a connection already.
    pub fn dial(&mut self, a: usize, b: usize, rng: &mut Pcg64Mcg) -> Option<(ConnId, u64)> {
        if self.pair_conn.contains_key(&pair(a, b)) {
            return None;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        self.stats.connections += 1;
        self.conns.insert(id, Conn { a, b, open: false, dead: false, wire_free_us: [0; 2], last_arrival_us: [0; 2] });
        self.pair_conn.insert(pair(a, b), id);
        // QUIC's handshake: one round trip, plus the first stream's.
        let handshake = 2 * (self.latency_us(rng) + self.latency_us(rng));
        Some((id, handshake))
    }

    pub fn mark_open(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.open = true;
            self.backoff_us.remove(&pair(conn.a, conn.b));
        }
    }

    /// Ends a connection; it is forgotten, and its pair may dial again.
    pub fn kill(&mut self, id: ConnId) -> Option<Conn> {
        let conn = self.conns.remove(&id)?;
        if self.pair_conn.get(&pair(conn.a, conn.b)) == Some(&id) {
            self.pair_conn.remove(&pair(conn.a, conn.b));
        }
        Some(conn)
    }

    /// Marks a connection dead without forgetting it: frames in flight are dropped, and the
    /// ends learn of it when the caller delivers the news.
    pub fn doom(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.dead = true;
        }
    }

    /// The delay before the pair redials, doubling up to [`REDIAL_MAX_US`].
    pub fn next_backoff(&mut self, a: usize, b: usize) -> u64 {
        let backoff = self.backoff_us.entry(pair(a, b)).or_insert(REDIAL_FIRST_US / 2);
        *backoff = (*backoff * 2).min(REDIAL_MAX_US);
        *backoff
    }

    /// Puts a frame of `len` bytes on connection `id` from `from`, at `now_us` (after the
    /// sender's own `delay_us`).
    pub fn send(
        &mut self,
        id: ConnId,
        from: usize,
        len: usize,
        now_us: u64,
        delay_us: u64,
        rng: &mut Pcg64Mcg,
    ) -> Fate {
        let latency = self.latency_us(rng);
        let bandwidth = self.bytes_per_ms();
        let (loss, duplicate, reorder) = (self.loss_ppm, self.duplicate_ppm, self.reorder_ppm);
        let blocked = {
            let Some(conn) = self.conns.get(&id) else { return Fate::Dropped };
            if conn.dead {
                return Fate::Dropped;
            }
            self.is_blocked(from, conn.other(from))
        };
        let Some(conn) = self.conns.get_mut(&id) else { return Fate::Dropped };
        self.stats.frames += 1;
        self.stats.bytes += len as u64;
        if blocked || chance(rng, loss) {
            self.stats.lost += 1;
            conn.dead = true;
            return Fate::Lost;
        }
        let direction = conn.direction(from);
        let transmit_us = (len as u64).saturating_mul(1000) / bandwidth;
        let start = (now_us + delay_us).max(conn.wire_free_us[direction]);
        conn.wire_free_us[direction] = start + transmit_us;
        let mut arrival = start + transmit_us + latency;
        if chance(rng, reorder) {
            // Overtakes what is in flight: arrives early, out of stream order.
            self.stats.reordered += 1;
            arrival = now_us + delay_us + transmit_us + latency / 4;
        } else {
            arrival = arrival.max(conn.last_arrival_us[direction] + 1);
            conn.last_arrival_us[direction] = arrival;
        }
        let mut arrivals = vec![arrival];
        if chance(rng, duplicate) {
            self.stats.duplicated += 1;
            arrivals.push(arrival + latency);
        }
        Fate::Arrives(arrivals)
    }

    /// How long until both ends notice a dead connection: a reset is seen in a round trip or
    /// so, a silent path only when pings time out.
    pub fn detection_us(&self, silent: bool, rng: &mut Pcg64Mcg) -> u64 {
        if silent { rng.random_range(5 * SECOND_US..=10 * SECOND_US) } else { 3 * self.latency_us(rng) + 1_000 }
    }

    /// One-way latency of one frame: a base, with a long tail.
    pub fn latency_us(&self, rng: &mut Pcg64Mcg) -> u64 {
        let base = match self.kind {
            LinkKind::Lan => rng.random_range(100..=500),
            LinkKind::Wan => rng.random_range(10_000..=80_000),
        };
        match rng.random_range(0..100u32) {
            0 => base * 20,
            1..=4 => base * 4,
            _ => base,
        }
    }

    fn bytes_per_ms(&self) -> u64 {
        match self.kind {
            LinkKind::Lan => 12_500, // 100 Mbit/s
            LinkKind::Wan => 500,    // 4 Mbit/s
        }
    }
}

fn chance(rng: &mut Pcg64Mcg, ppm: u32) -> bool {
    ppm > 0 && rng.random_range(0..1_000_000u32) < ppm
}
