//! The client side of the proof: confirmed publishers and acking consumers spread over the
//! nodes, moving to another node whenever theirs fails, all writing one `Ledger`; and `verify`.
//!
//! Every message body carries a unique id (publisher << 40 | sequence) followed by bytes derived
//! from it, so damage is caught. A publisher records an id as published before sending it and as
//! confirmed only on a broker ack (mandatory: an ack that comes with a basic.return is recorded
//! as returned, i.e. no queue took it). A consumer records every id it receives, then acks.
//!
//! `verify` (on a `Ledger`, so it is testable on its own) holds a run to: every confirmed id
//! delivered, nothing delivered that was never published, from the queue it was published to,
//! with its body intact, and no message returned; duplicates (at-least-once) are counted, not
//! failed.

use super::faults::Timeline;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the clients do.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Durable queues, declared with `queue_args`; publishers spread messages over them.
    pub queues: Vec<String>,
    /// e.g. `x-queue-type: quorum`.
    pub queue_args: FieldTable,
    /// Confirmed publishers; publisher k starts on node k mod n.
    pub publishers: usize,
    /// Consumers per queue per node.
    pub consumers_per_node: usize,
    /// A consumer whose node fails waits for that node instead of moving to the next one
    /// (for independent nodes, where each node's queue is its own).
    pub consumers_stay: bool,
    /// Body size in bytes (at least 12: the id and the length).
    pub body_size: usize,
    /// delivery_mode 2.
    pub persistent: bool,
    /// Publishes sent before waiting for their confirms.
    pub window: usize,
    /// Pause after each confirmed window (keeps the volume, and the drain, small).
    pub pause: Duration,
    pub prefetch: u16,
    /// A window not confirmed within this ends the publisher's connection (it moves on).
    pub confirm_timeout: Duration,
    /// Connecting (TCP and the AMQP handshake) within this, or try the next node.
    pub connect_timeout: Duration,
}

impl Spec {
    pub fn new(queues: &[&str]) -> Spec {
        Spec {
            queues: queues.iter().map(|q| q.to_string()).collect(),
            queue_args: FieldTable::default(),
            publishers: 3,
            consumers_per_node: 1,
            consumers_stay: false,
            body_size: 64,
            persistent: true,
            window: 20,
            pause: Duration::from_millis(5),
            prefetch: 50,
            confirm_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What every client recorded.
#[derive(Default, Debug)]
pub struct Ledger {
    /// id -> index of the queue it was published to (recorded before the publish is sent).
    pub published: HashMap<u64, usize>,
    pub confirmed: HashSet<u64>,
    pub nacked: HashSet<u64>,
    pub returned: HashSet<u64>,
    /// id -> (queue index it was delivered from, deliveries).
    pub delivered: HashMap<u64, (usize, u32)>,
    /// Deliveries from a queue other than the one the id was published to: (id, queue).
    pub wrong_queue: Vec<(u64, usize)>,
    /// Deliveries whose body is not one we publish (first bytes kept).
    pub damaged: Vec<Vec<u8>>,
    pub redelivered: u64,
    /// Deliveries of an id delivered before that came without the redelivered flag.
    pub again_unflagged: u64,
    /// Consumers the broker cancelled (basic.cancel) while their channel stayed open: no run
    /// deletes a queue, so none should be (a quorum queue's consumers follow its leader).
    pub cancelled: u64,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    pub published: usize,
    pub confirmed: usize,
    pub nacked: usize,
    pub returned: usize,
    /// Published, neither confirmed nor refused (the connection died first): may or may not
    /// be delivered.
    pub unconfirmed: usize,
    pub delivered: usize,
    pub deliveries: u64,
    /// Ids delivered more than once (allowed).
    pub duplicates: usize,
    pub redelivered: u64,
    /// Repeat deliveries without the redelivered flag (allowed, reported).
    pub again_unflagged: u64,
    /// Consumers cancelled by the broker (a failure).
    pub cancelled: u64,
    /// Confirmed and never delivered: lost.
    pub missing: Vec<u64>,
    /// Delivered and never published.
    pub unexpected: Vec<u64>,
    pub wrong_queue: usize,
    pub damaged: usize,
    pub publisher_connects: u64,
    pub consumer_connects: u64,
}

impl Report {
    /// What makes the run a failure (empty: it passed).
    pub fn problems(&self) -> Vec<String> {
        let ids = |v: &[u64]| format!("{:x?}", &v[..v.len().min(10)]);
        let mut p = Vec::new();
        if !self.missing.is_empty() {
            p.push(format!(
                "{} confirmed messages never delivered, e.g. {}",
                self.missing.len(),
                ids(&self.missing)
            ));
        }
        if !self.unexpected.is_empty() {
            p.push(format!(
                "{} delivered messages never published, e.g. {}",
                self.unexpected.len(),
                ids(&self.unexpected)
            ));
        }
        if self.wrong_queue > 0 {
            p.push(format!(
                "{} deliveries from the wrong queue",
                self.wrong_queue
            ));
        }
        if self.damaged > 0 {
            p.push(format!("{} deliveries with a damaged body", self.damaged));
        }
        if self.cancelled > 0 {
            p.push(format!(
                "{} consumers cancelled by the broker (basic.cancel) with their channel open",
                self.cancelled
            ));
        }
        if self.returned > 0 {
            p.push(format!(
                "{} publishes returned unroutable (a queue was missing)",
                self.returned
            ));
        }
        p
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "published {}, confirmed {}, nacked {}, returned {}, unconfirmed {}; delivered {} ids \
             in {} deliveries ({} duplicated, {} redelivered flags, {} repeats unflagged); \
             consumers cancelled {}; missing {}, unexpected {}, \
             wrong queue {}, damaged {}; connects: publishers {}, consumers {}",
            self.published,
            self.confirmed,
            self.nacked,
            self.returned,
            self.unconfirmed,
            self.delivered,
            self.deliveries,
            self.duplicates,
            self.redelivered,
            self.again_unflagged,
            self.cancelled,
            self.missing.len(),
            self.unexpected.len(),
            self.wrong_queue,
            self.damaged,
            self.publisher_connects,
            self.consumer_connects
        )
    }
}

impl Ledger {
    /// Confirmed ids not delivered yet.
    pub fn outstanding(&self) -> usize {
        self.confirmed
            .iter()
            .filter(|id| !self.delivered.contains_key(id))
            .count()
    }

    /// Check the run (see the module's doc).
    pub fn verify(&self) -> Report {
        let mut missing: Vec<u64> = self
            .confirmed
            .iter()
            .filter(|id| !self.delivered.contains_key(id))
            .copied()
            .collect();
        missing.sort_unstable();
        let mut unexpected: Vec<u64> = self
            .delivered
            .keys()
            .filter(|id| !self.published.contains_key(id))
            .copied()
            .collect();
        unexpected.sort_unstable();
        let settled = |id: &u64| {
            self.confirmed.contains(id) || self.nacked.contains(id) || self.returned.contains(id)
        };
        Report {
            published: self.published.len(),
            confirmed: self.confirmed.len(),
            nacked: self.nacked.len(),
            returned: self.returned.len(),
            unconfirmed: self.published.keys().filter(|id| !settled(id)).count(),
            delivered: self.delivered.len(),
            deliveries: self.delivered.values().map(|(_, n)| *n as u64).sum(),
            duplicates: self.delivered.values().filter(|(_, n)| *n > 1).count(),
            redelivered: self.redelivered,
            again_unflagged: self.again_unflagged,
            cancelled: self.cancelled,
            missing,
            unexpected,
            wrong_queue: self.wrong_queue.len(),
            damaged: self.damaged.len(),
            publisher_connects: 0,
            consumer_connects: 0,
        }
    }
}

/// The body of message `id`: the id, the body's length, then bytes derived from the id; `size`
/// bytes in all (at least 12).
pub fn body_of(id: u64, size: usize) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend((size as u32).to_be_bytes());
    let seed = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    b.extend((0..size.saturating_sub(12)).map(|i| (seed >> ((i % 8) * 8)) as u8 ^ i as u8));
    b
}

/// The id in `body`, if the body is exactly what `body_of` makes for it.
pub fn id_of(body: &[u8]) -> Option<u64> {
    let id = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
    (body == body_of(id, body.len()).as_slice()).then_some(id)
}

/// Publishers and consumers running against a set of nodes (by AMQP URL; a node keeps its URL
/// across restarts).
pub struct Workload {
    urls: Vec<String>,
    spec: Spec,
    pub ledger: Arc<Mutex<Ledger>>,
    pub timeline: Timeline,
    stop_pub: watch::Sender<bool>,
    stop_con: watch::Sender<bool>,
    publishers: Vec<JoinHandle<()>>,
    consumers: Vec<JoinHandle<()>>,
    pub_connects: Arc<AtomicU64>,
    con_connects: Arc<AtomicU64>,
}

impl Workload {
    pub fn new(urls: Vec<String>, spec: Spec, timeline: Timeline) -> Workload {
        assert!(spec.body_size >= 12 && !spec.queues.is_empty() && !urls.is_empty());
        Workload {
            urls,
            spec,
            ledger: Arc::default(),
            timeline,
            stop_pub: watch::Sender::new(false),
            stop_con: watch::Sender::new(false),
            publishers: Vec::new(),
            consumers: Vec::new(),
            pub_connects: Arc::default(),
            con_connects: Arc::default(),
        }
    }

    /// Declare the queues, start the publishers and the consumers.
    pub async fn start(urls: Vec<String>, spec: Spec, timeline: Timeline) -> Workload {
        let mut w = Workload::new(urls, spec, timeline);
        w.declare().await.expect("declare the queues");
        w.start_consumers();
        w.start_publishers();
        w
    }

    /// Declare every queue (durable, with the spec's arguments), on the first node that
    /// answers.
    pub async fn declare(&self) -> Result<(), String> {
        let mut last = String::new();
        for url in self.urls.iter().cycle().take(self.urls.len() * 3) {
            match self.try_declare(url).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(last)
    }

    /// Every queue exists, as seen from every node (passive declare): "no queue lost". Err names
    /// the first node and queue that fail.
    pub async fn check_queues(&self) -> Result<(), String> {
        for (i, url) in self.urls.iter().enumerate() {
            let c = connect(url, self.spec.connect_timeout)
                .await
                .map_err(|e| format!("node {i}: {e}"))?;
            for q in &self.spec.queues {
                // A refusal closes the channel: one channel per queue.
                let ch = c.create_channel().await.map_err(|e| e.to_string())?;
                ch.queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| format!("node {i}: queue {q}: {e}"))?;
            }
            close(c).await;
        }
        Ok(())
    }

    /// Declare every queue on every node (independent nodes, each with its own queues).
    pub async fn declare_on_every_node(&self) -> Result<(), String> {
        for url in &self.urls {
            self.try_declare(url).await?;
        }
        Ok(())
    }

    async fn try_declare(&self, url: &str) -> Result<(), String> {
        let c = connect(url, self.spec.connect_timeout).await?;
        let ch = c.create_channel().await.map_err(|e| e.to_string())?;
        for q in &self.spec.queues {
            ch.queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                self.spec.queue_args.clone(),
            )
            .await
            .map_err(|e| format!("declare {q}: {e}"))?;
        }
        let _ = c.close(200, "".into()).await;
        Ok(())
    }

    pub fn start_publishers(&mut self) {
        let n = self.urls.len();
        for k in 0..self.spec.publishers {
            let p = Publisher {
                k,
                urls: self.urls.clone(),
                spec: self.spec.clone(),
                ledger: self.ledger.clone(),
                timeline: self.timeline.clone(),
                stop: self.stop_pub.subscribe(),
                connects: self.pub_connects.clone(),
            };
            self.publishers.push(tokio::spawn(p.run(k % n)));
        }
    }

    /// `consumers_per_node` consumers per queue on every node.
    pub fn start_consumers(&mut self) {
        for node in 0..self.urls.len() {
            for q in 0..self.spec.queues.len() {
                for c in 0..self.spec.consumers_per_node {
                    let con = Consumer {
                        name: format!("consumer {node}.{q}.{c}"),
                        queue: q,
                        urls: self.urls.clone(),
                        spec: self.spec.clone(),
                        ledger: self.ledger.clone(),
                        timeline: self.timeline.clone(),
                        stop: self.stop_con.subscribe(),
                        connects: self.con_connects.clone(),
                    };
                    self.consumers.push(tokio::spawn(con.run(node)));
                }
            }
        }
    }

    /// Stop publishing: each publisher finishes its window (confirmed or timed out) and
    /// disconnects.
    pub async fn stop_publishers(&mut self) {
        let _ = self.stop_pub.send(true);
        let limit = self.spec.confirm_timeout + self.spec.connect_timeout + Duration::from_secs(5);
        join_all(std::mem::take(&mut self.publishers), limit).await;
        self.timeline.log("publishers stopped");
    }

    /// Wait until at least `n` messages are confirmed (the load is running), or `timeout`.
    pub async fn wait_confirmed(&self, n: usize, timeout: Duration) -> bool {
        let t = Instant::now();
        while self.ledger.lock().confirmed.len() < n {
            if t.elapsed() > timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.timeline.log(format!("{n} confirmed"));
        true
    }

    /// Wait until every confirmed id has been delivered, or `timeout`. Whether it got there.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let t = Instant::now();
        loop {
            let left = self.ledger.lock().outstanding();
            if left == 0 {
                self.timeline.log(format!("drained in {:?}", t.elapsed()));
                return true;
            }
            if t.elapsed() > timeout {
                self.timeline.log(format!(
                    "drain gave up after {timeout:?}: {left} confirmed ids undelivered"
                ));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop_consumers(&mut self) {
        let _ = self.stop_con.send(true);
        join_all(std::mem::take(&mut self.consumers), Duration::from_secs(10)).await;
        self.timeline.log("consumers stopped");
    }

    /// The ledger checked now (see `Ledger::verify`).
    pub fn report(&self) -> Report {
        let mut r = self.ledger.lock().verify();
        r.publisher_connects = self.pub_connects.load(Relaxed);
        r.consumer_connects = self.con_connects.load(Relaxed);
        r
    }

    /// Stop publishing, drain for up to `drain`, stop consuming, and report.
    pub async fn finish(mut self, drain: Duration) -> Report {
        self.stop_publishers().await;
        self.drain(drain).await;
        self.stop_consumers().await;
        self.report()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        for t in self.publishers.iter().chain(&self.consumers) {
            t.abort();
        }
    }
}

/// Await the tasks up to `limit`, then abort the rest; a client's panic is passed on.
async fn join_all(tasks: Vec<JoinHandle<()>>, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    for mut t in tasks {
        match tokio::time::timeout_at(deadline, &mut t).await {
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(_) => {}
            Err(_) => t.abort(),
        }
    }
}

async fn connect(url: &str, within: Duration) -> Result<Connection, String> {
    match tokio::time::timeout(within, Connection::connect(url, Default::default())).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {within:?}")),
    }
}

/// Resolves (as an error) once the connection is no longer connected. A client's pending
/// call does not always end when its connection does: in a 100-cycle kill -9 run, consumers
/// waited forever on a connection whose broker had been killed.
async fn lost(c: &Connection) -> Result<(), String> {
    while c.status().connected() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err("connection lost (lapin status)".into())
}

/// Close politely if the broker answers soon; either way the connection is gone.
async fn close(c: Connection) {
    let _ = tokio::time::timeout(Duration::from_millis(500), c.close(200, "".into())).await;
}

struct Publisher {
    k: usize,
    urls: Vec<String>,
    spec: Spec,
    ledger: Arc<Mutex<Ledger>>,
    timeline: Timeline,
    stop: watch::Receiver<bool>,
    connects: Arc<AtomicU64>,
}

impl Publisher {
    async fn run(mut self, first_node: usize) {
        let mut node = first_node;
        let mut seq: u64 = 0;
        while !*self.stop.borrow() {
            match connect(&self.urls[node], self.spec.connect_timeout).await {
                Ok(c) => {
                    self.connects.fetch_add(1, Relaxed);
                    self.timeline
                        .log(format!("publisher {} connected to node {node}", self.k));
                    let why = tokio::select! {
                        r = self.session(&c, &mut seq) => r,
                        r = lost(&c) => r,
                    };
                    close(c).await;
                    if let Err(why) = why {
                        self.timeline
                            .log(format!("publisher {} left node {node}: {why}", self.k));
                    } else {
                        return; // stopped
                    }
                }
                Err(e) => self.timeline.log(format!(
                    "publisher {} cannot connect to node {node}: {e}",
                    self.k
                )),
            }
            node = (node + 1) % self.urls.len();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Publish windows until stopped (Ok) or the connection fails (Err).
    async fn session(&mut self, c: &Connection, seq: &mut u64) -> Result<(), String> {
        let ch = c.create_channel().await.map_err(|e| e.to_string())?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let props =
            BasicProperties::default().with_delivery_mode(if self.spec.persistent { 2 } else { 1 });
        let nq = self.spec.queues.len();
        let late = || format!("no confirm within {:?}", self.spec.confirm_timeout);
        while !*self.stop.borrow() {
            let deadline = tokio::time::Instant::now() + self.spec.confirm_timeout;
            let mut window = Vec::with_capacity(self.spec.window);
            for _ in 0..self.spec.window {
                let id = ((self.k as u64) << 40) | *seq;
                let q = (*seq as usize) % nq;
                *seq += 1;
                self.ledger.lock().published.insert(id, q);
                let body = body_of(id, self.spec.body_size);
                let publish = ch.basic_publish(
                    "".into(),
                    self.spec.queues[q].as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    props.clone(),
                );
                let confirm = tokio::time::timeout_at(deadline, publish)
                    .await
                    .map_err(|_| late())?
                    .map_err(|e| format!("publish: {e}"))?;
                window.push((id, confirm));
            }
            for (id, confirm) in window {
                let c = tokio::time::timeout_at(deadline, confirm)
                    .await
                    .map_err(|_| late())?
                    .map_err(|e| format!("confirm: {e}"))?;
                let mut l = self.ledger.lock();
                match c {
                    Confirmation::Ack(None) => l.confirmed.insert(id),
                    Confirmation::Ack(Some(_)) => l.returned.insert(id),
                    Confirmation::Nack(_) => l.nacked.insert(id),
                    Confirmation::NotRequested => unreachable!("confirm.select was ok"),
                };
            }
            if !self.spec.pause.is_zero() {
                tokio::time::sleep(self.spec.pause).await;
            }
        }
        Ok(())
    }
}

struct Consumer {
    name: String,
    queue: usize,
    urls: Vec<String>,
    spec: Spec,
    ledger: Arc<Mutex<Ledger>>,
    timeline: Timeline,
    stop: watch::Receiver<bool>,
    connects: Arc<AtomicU64>,
}

impl Consumer {
    async fn run(self, first_node: usize) {
        let mut node = first_node;
        loop {
            if *self.stop.borrow() {
                return;
            }
            match connect(&self.urls[node], self.spec.connect_timeout).await {
                Ok(c) => {
                    self.connects.fetch_add(1, Relaxed);
                    self.timeline
                        .log(format!("{} connected to node {node}", self.name));
                    let mut stop = self.stop.clone();
                    let why = tokio::select! {
                        r = self.session(&c) => r,
                        r = lost(&c) => r,
                        _ = stop.wait_for(|s| *s) => Ok(()),
                    };
                    close(c).await;
                    match why {
                        Ok(()) => return,
                        Err(why) => self
                            .timeline
                            .log(format!("{} left node {node}: {why}", self.name)),
                    }
                }
                Err(e) => self
                    .timeline
                    .log(format!("{} cannot connect to node {node}: {e}", self.name)),
            }
            if !self.spec.consumers_stay {
                node = (node + 1) % self.urls.len();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Consume and ack until the connection fails (Err); never returns Ok on its own.
    async fn session(&self, c: &Connection) -> Result<(), String> {
        let ch = c.create_channel().await.map_err(|e| e.to_string())?;
        ch.basic_qos(self.spec.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let mut consumer = ch
            .basic_consume(
                self.spec.queues[self.queue].as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("consume: {e}"))?;
        while let Some(d) = consumer.next().await {
            let d = d.map_err(|e| format!("delivery: {e}"))?;
            {
                let mut l = self.ledger.lock();
                if d.redelivered {
                    l.redelivered += 1;
                }
                match id_of(&d.data) {
                    None => l.damaged.push(d.data[..d.data.len().min(16)].to_vec()),
                    Some(id) => {
                        if l.published.get(&id).is_some_and(|&q| q != self.queue) {
                            l.wrong_queue.push((id, self.queue));
                        }
                        let seen = l.delivered.entry(id).or_insert((self.queue, 0));
                        seen.1 += 1;
                        if seen.1 > 1 && !d.redelivered {
                            l.again_unflagged += 1;
                        }
                    }
                }
            }
            d.ack(BasicAckOptions::default())
                .await
                .map_err(|e| format!("ack: {e}"))?;
        }
        if ch.status().connected() {
            self.ledger.lock().cancelled += 1;
            return Err("the broker cancelled the consumer (basic.cancel)".into());
        }
        Err("channel or connection closed".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bodies round-trip; a changed byte or length is caught.
    #[test]
    fn bodies_carry_their_id() {
        for (id, size) in [(0u64, 12usize), (7 << 40 | 12345, 64), (u64::MAX, 1000)] {
            let b = body_of(id, size);
            assert_eq!(b.len(), size);
            assert_eq!(id_of(&b), Some(id));
            for at in [8, size - 1] {
                let mut bad = b.clone();
                bad[at] ^= 1;
                assert_eq!(id_of(&bad), None, "byte {at} of {size} changed");
            }
        }
        assert_eq!(id_of(&body_of(5, 64)[..63]), None);
        assert_eq!(id_of(b"short"), None);
    }

    /// verify fails a lost confirmed message, a message never published, one from the wrong
    /// queue, a damaged body, a return and a consumer the broker cancelled; it passes
    /// duplicates and lost unconfirmed ones.
    #[test]
    fn verify_tells_loss_from_duplicates() {
        let mut l = Ledger::default();
        for id in 0..10 {
            l.published.insert(id, 0);
        }
        l.confirmed.extend(0..8);
        l.nacked.insert(8);
        for id in 0..8 {
            l.delivered.insert(id, (0, 1));
        }
        l.delivered.insert(3, (0, 2));
        let r = l.verify();
        assert!(r.problems().is_empty(), "{:?}", r.problems());
        assert_eq!(
            (r.published, r.confirmed, r.nacked, r.unconfirmed),
            (10, 8, 1, 1)
        );
        assert_eq!((r.delivered, r.deliveries, r.duplicates), (8, 9, 1));

        l.delivered.remove(&5);
        l.delivered.insert(1 << 40, (0, 1));
        l.wrong_queue.push((2, 1));
        l.damaged.push(vec![1, 2, 3]);
        l.returned.insert(9);
        l.cancelled = 1;
        let r = l.verify();
        assert_eq!(r.missing, vec![5]);
        assert_eq!(r.unexpected, vec![1 << 40]);
        assert_eq!(r.problems().len(), 6, "{:?}", r.problems());
        assert_eq!(l.outstanding(), 1);
    }
}
