//! Whole groups over the wire, on the in-memory network under tokio's paused clock, so that
//! every timing is exact and no test sleeps to synchronise: each waits for an event, with a
//! virtual deadline.
//!
//! - the active member is killed → the next in line activates within activation_interval plus
//!   one heartbeat;
//! - a higher-weight member joins → exactly one handover;
//! - a monitor reports active-count changes within lost_interval;
//! - a partition → work committed through the fenced log never goes back to an older epoch,
//!   and when the partition heals a single member stays active;
//! - a heavier member takes over from a primary that appends faster than the store lists the
//!   log (the race fixed in 84fd0b3, replayed deterministically with a store whose listings
//!   take time in proportion to their length).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cohort_checkpoint::CheckpointStore;
use cohort_checkpoint::object_store::{
    self, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, memory::InMemory, path::Path,
};
use cohort_replication::fencing::EntryKind;
use cohort_replication::group::MemberState;
use cohort_replication::monitor::MonitorOptions;
use cohort_replication::testing::{MemoryAcceptor, MemoryNetwork};
use cohort_replication::{
    DeactivateReason, GroupConfig, GroupName, Member, MemberEvent, MemberId, MemberOptions,
    Monitor, SlotEpoch, current_actives,
};
use cohort_wire::Accept;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::time::Instant;

const HB: Duration = Duration::from_millis(50);
const ACT: Duration = Duration::from_millis(150);
/// The longest any test waits for one event, in virtual time.
const PATIENCE: Duration = Duration::from_secs(30);

struct Group {
    net: MemoryNetwork,
    store: CheckpointStore,
    goal: u32,
    quorum: Option<u32>,
}

impl Group {
    fn new(goal: u32) -> Self {
        Self {
            net: MemoryNetwork::new(),
            store: CheckpointStore::memory(),
            goal,
            quorum: None,
        }
    }

    fn config(&self, weight: u16) -> GroupConfig {
        GroupConfig::new("orders", self.goal)
            .unwrap()
            .with_weight(weight)
            .with_heartbeat_interval(HB)
            .with_activation_interval(ACT)
            .with_quorum(self.quorum)
    }

    /// An address, to be used by `start` (so that seeds can name members before they start).
    fn listen(&self) -> (MemoryAcceptor, String) {
        let acceptor = self.net.listen();
        let addr = acceptor.local_addr().unwrap().to_string();
        (acceptor, addr)
    }

    async fn start(
        &self,
        name: &str,
        weight: u16,
        (acceptor, addr): (MemoryAcceptor, String),
        seeds: &[String],
    ) -> Member {
        let mut options = MemberOptions::new(
            self.config(weight),
            MemberId::new(name).unwrap(),
            self.store.clone(),
        );
        options.connector = self.net.connector(addr.clone());
        options.seeds = seeds.to_vec();
        options.service_addr = format!("svc-{name}");
        let listener = options.listen_config().listen_on(acceptor).unwrap();
        Member::start_on(options, listener).await.unwrap()
    }
}

/// Waits for the first event that `pick` accepts, returning it with its (virtual) time.
async fn wait_for<T>(
    member: &mut Member,
    mut pick: impl FnMut(&MemberEvent) -> Option<T>,
) -> (Instant, T) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let event = tokio::time::timeout_at(deadline, member.next_event())
            .await
            .unwrap_or_else(|_| panic!("{} saw no expected event within {PATIENCE:?}", member.id()))
            .expect("the member stopped");
        if let Some(found) = pick(&event) {
            return (Instant::now(), found);
        }
    }
}

fn activated(event: &MemberEvent) -> Option<SlotEpoch> {
    match event {
        MemberEvent::Activate(se) => Some(*se),
        _ => None,
    }
}

/// Starts a, b, c (weights 30, 20, 10), each seeded with all three addresses, and waits until a
/// is active.
async fn three(group: &Group) -> (Member, Member, Member, Vec<String>) {
    let listeners = [group.listen(), group.listen(), group.listen()];
    let seeds: Vec<String> = listeners.iter().map(|(_, a)| a.clone()).collect();
    let [la, lb, lc] = listeners;
    let mut a = group.start("a", 30, la, &seeds).await;
    let b = group.start("b", 20, lb, &seeds).await;
    let c = group.start("c", 10, lc, &seeds).await;
    let (_, se) = wait_for(&mut a, activated).await;
    assert_eq!(se, SlotEpoch { slot: 0, epoch: 1 });
    (a, b, c, seeds)
}

#[tokio::test(start_paused = true)]
async fn killing_the_active_member_activates_the_next_in_line_within_activation_plus_a_heartbeat() {
    let group = Group::new(1);
    let (a, mut b, c, _) = three(&group).await;
    // Let the group settle: everyone hears everyone.
    let mut status = c.status();
    tokio::time::timeout(
        PATIENCE,
        status.wait_for(|s| s.peers.len() == 2 && s.active_count == 1),
    )
    .await
    .unwrap()
    .unwrap();

    let killed = Instant::now();
    a.kill();
    let (at, se) = wait_for(&mut b, activated).await;
    let failover = at - killed;
    assert_eq!(se, SlotEpoch { slot: 0, epoch: 2 });
    assert!(
        failover <= ACT + HB,
        "failover took {failover:?}, more than activation {ACT:?} + heartbeat {HB:?}"
    );
    assert!(
        failover >= ACT - HB,
        "{failover:?}: detected before a could have been silent for long"
    );
    // c stays inactive and sees b.
    tokio::time::timeout(
        PATIENCE,
        status.wait_for(|s| s.peers.get(&MemberId::new("b").unwrap()) == Some(&Some(se))),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(c.status().borrow().state, MemberState::Inactive);
    // Clients find b through the store.
    let actives = current_actives(&group.store, &GroupName::new("orders").unwrap())
        .await
        .unwrap();
    assert_eq!(actives.len(), 1);
    assert_eq!(
        (actives[0].member.as_str(), actives[0].service_addr.as_str()),
        ("b", "svc-b")
    );
}

#[tokio::test(start_paused = true)]
async fn a_higher_weight_member_joining_takes_over_with_exactly_one_handover() {
    let group = Group::new(1);
    let (mut a, mut b, mut c, seeds) = three(&group).await;
    let joined = Instant::now();
    let mut n = group.start("n", 50, group.listen(), &seeds[..1]).await;
    let (n_at, n_se) = wait_for(&mut n, activated).await;
    assert_eq!(n_se, SlotEpoch { slot: 0, epoch: 2 });
    assert!(
        n_at - joined >= ACT,
        "n activated {:?} after joining, before a full activation interval",
        n_at - joined
    );
    let (a_at, reason) = wait_for(&mut a, |e| match e {
        MemberEvent::Deactivate { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(reason, DeactivateReason::Superseded { ref by, epoch: 2 } if by.as_str() == "n"),
        "{reason:?}"
    );
    assert!(
        a_at - n_at <= HB,
        "a stepped down {:?} after n activated",
        a_at - n_at
    );

    // Then nothing changes for a long while: no second handover anywhere.
    let quiet = Instant::now() + 20 * ACT;
    for member in [&mut a, &mut b, &mut c, &mut n] {
        loop {
            match tokio::time::timeout_at(quiet, member.next_event()).await {
                Err(_) => break,
                Ok(Some(MemberEvent::Activate(se))) => {
                    panic!("{} activated again: {se}", member.id())
                }
                Ok(Some(MemberEvent::Deactivate { .. })) => {
                    panic!("{} deactivated again", member.id())
                }
                Ok(_) => {}
            }
        }
    }
    assert_eq!(n.active(), Some(n_se));
    assert_eq!(a.active(), None);
}

#[tokio::test(start_paused = true)]
async fn a_monitor_reports_active_count_changes_within_lost_interval() {
    let group = Group::new(1);
    let lost_interval = Duration::from_millis(200);
    let (la, a_addr) = group.listen();
    let (lb, b_addr) = group.listen();
    let mut a = group.start("a", 10, (la, a_addr.clone()), &[]).await;
    // The monitor is no member: it only knows where members listen, and keeps retrying.
    let mut options = MonitorOptions::new(
        GroupName::new("orders").unwrap(),
        lost_interval,
        vec![a_addr.clone(), b_addr.clone()],
    );
    options.connector = group.net.connector("monitor");
    let mut monitor = Monitor::start(options).unwrap();

    let (a_active, _) = wait_for(&mut a, activated).await;
    let (seen, count) = next_count(&mut monitor, 1).await;
    assert!(
        seen - a_active <= HB,
        "activation seen {:?} late",
        seen - a_active
    );
    assert_eq!(
        count.actives,
        vec![(MemberId::new("a").unwrap(), SlotEpoch { slot: 0, epoch: 1 })]
    );

    // The active member crashes: the monitor drops it within lost_interval.
    let killed = Instant::now();
    a.kill();
    let (seen, _) = next_count(&mut monitor, 0).await;
    assert!(
        seen - killed <= lost_interval,
        "loss seen {:?} after the crash",
        seen - killed
    );
    assert!(
        seen - killed >= lost_interval - HB,
        "loss seen too early: {:?}",
        seen - killed
    );

    // A new member comes up at a seed address: the monitor counts it once it activates.
    let mut b = group.start("b", 10, (lb, b_addr), &[]).await;
    let (b_active, _) = wait_for(&mut b, activated).await;
    let (seen, count) = next_count(&mut monitor, 1).await;
    assert!(
        seen - b_active <= HB,
        "b's activation seen {:?} late",
        seen - b_active
    );
    assert_eq!(count.actives[0].0.as_str(), "b");
    assert_eq!(*monitor.counts().borrow(), count);
}

async fn next_count(
    monitor: &mut Monitor,
    want: usize,
) -> (Instant, cohort_replication::ActiveCount) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (at, count) = tokio::time::timeout_at(deadline, monitor.next_change())
            .await
            .expect("no count change in time")
            .expect("the monitor stopped");
        if count.count == want {
            return (at, count);
        }
    }
}

/// What an appender saw: when, who, under which activation, and the outcome.
type Appended = Arc<Mutex<Vec<(MemberId, SlotEpoch, Result<u64, String>)>>>;

/// Commits a numbered entry every 10 ms while the member is active.
fn appender(member: &Member, record: Appended) -> tokio::task::JoinHandle<()> {
    let handle = member.handle();
    tokio::spawn(async move {
        let mut n = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tick.tick().await;
            let Some(se) = handle.active() else { continue };
            n += 1;
            let body = Bytes::from(format!("{}-{n}", handle.id()));
            let outcome = handle.append(body).await.map_err(|e| {
                assert!(
                    e.is_fenced() || matches!(e, cohort_replication::Error::NotActive { .. }),
                    "{e}"
                );
                e.to_string()
            });
            record
                .lock()
                .unwrap()
                .push((handle.id().clone(), se, outcome));
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_partition_never_lets_an_older_epoch_commit_and_heals_to_one_active() {
    let fences = partition(None).await;
    // Without a quorum the isolated member takes its slot back now and then (backing off).
    assert!(fences.len() > 2, "{fences:?}");
}

#[tokio::test(start_paused = true)]
async fn with_a_quorum_the_isolated_member_stays_down_during_the_partition() {
    let fences = partition(Some(2)).await;
    assert_eq!(fences, vec![("a".to_owned(), 1), ("b".to_owned(), 2)]);
}

/// Cuts a off from b and c for 3 s while every active member commits every 10 ms; checks that
/// the log never takes work from a deposed epoch and that one member is active after the
/// heal. Returns the fences written before the heal, as (member, epoch).
async fn partition(quorum: Option<u32>) -> Vec<(String, u64)> {
    let mut group = Group::new(1);
    group.quorum = quorum;
    let (mut a, mut b, c, seeds) = three(&group).await;
    let record: Appended = Arc::default();
    let appenders: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|m| appender(m, Arc::clone(&record)))
        .collect();
    tokio::time::sleep(ACT).await; // a commits for a while (virtual time)

    // Cut a off from b and c; all still reach the store.
    let partitions = group.net.partitions();
    partitions.partition(
        &[seeds[0].as_str()],
        &[seeds[1].as_str(), seeds[2].as_str()],
    );
    let cut = Instant::now();
    let (b_at, b_se) = wait_for(&mut b, activated).await;
    assert_eq!(b_se.epoch, 2);
    assert!(
        b_at - cut <= ACT + HB,
        "b took over {:?} after the cut",
        b_at - cut
    );
    // a learns it was deposed at its next commit.
    let (a_at, reason) = wait_for(&mut a, |e| match e {
        MemberEvent::Deactivate { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, DeactivateReason::Fenced { by: 2 });
    assert!(
        a_at - b_at <= Duration::from_millis(20),
        "a fenced {:?} after b's fence",
        a_at - b_at
    );

    // The partition lasts: the isolated side may take the slot back now and then (it backs
    // off), but never commits under an older epoch.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fences_before_heal: Vec<(String, u64)> = a
        .log()
        .read_from(1)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.kind, EntryKind::Fence { .. }))
        .map(|e| (e.member.to_string(), e.writer.epoch))
        .collect();
    partitions.heal();

    // After the heal, exactly one member stays active, and every view agrees.
    let statuses = [a.status(), b.status(), c.status()];
    let deadline = Instant::now() + PATIENCE;
    let settled = loop {
        let states: Vec<_> = statuses.iter().map(|s| s.borrow().clone()).collect();
        let actives: Vec<SlotEpoch> = states.iter().filter_map(|s| s.active()).collect();
        let agreed = states
            .iter()
            .all(|s| s.peers.len() == 2 && s.active_count == 1);
        if actives.len() == 1 && agreed {
            break actives[0];
        }
        assert!(
            Instant::now() < deadline,
            "no single active after the heal: {states:?}"
        );
        tokio::time::sleep(HB).await;
    };
    for task in appenders {
        task.abort();
    }
    let newest = current_actives(&group.store, &GroupName::new("orders").unwrap())
        .await
        .unwrap();
    assert_eq!(
        newest[0].slot_epoch, settled,
        "the survivor holds the newest epoch"
    );

    // The log: every data entry carries the epoch of the latest fence before it.
    let log = a.log().read_from(1).await.unwrap();
    let mut fence = 0;
    let mut data = 0;
    for entry in &log {
        match &entry.kind {
            EntryKind::Fence { .. } => {
                assert!(entry.writer.epoch > fence, "fences go up: {entry:?}");
                fence = entry.writer.epoch;
            }
            EntryKind::Data(_) => {
                assert_eq!(
                    entry.writer.epoch, fence,
                    "entry {} committed by a deposed epoch",
                    entry.seq
                );
                data += 1;
            }
        }
    }
    // Every acknowledged append is in the log, under its activation.
    let record = record.lock().unwrap();
    let acknowledged: Vec<_> = record
        .iter()
        .filter_map(|(m, se, r)| r.as_ref().ok().map(|seq| (m, se, *seq)))
        .collect();
    assert!(
        acknowledged.len() >= 10,
        "too little work to prove anything: {}",
        acknowledged.len()
    );
    for (member, se, seq) in &acknowledged {
        let entry = log.iter().find(|e| e.seq == *seq).unwrap();
        assert_eq!((&entry.member, entry.writer), (*member, **se));
    }
    // An append refused as fenced may still have landed before the new fence (its successor
    // replays it); no other data entry exists.
    let fenced = record.iter().filter(|(_, _, r)| r.is_err()).count();
    assert!(fenced >= 1, "a's late commit was refused");
    assert!(
        (acknowledged.len()..=acknowledged.len() + fenced).contains(&data),
        "{data} data entries for {} acknowledged and {fenced} refused appends",
        acknowledged.len()
    );
    fences_before_heal
}

/// An in-memory object store whose every request takes `op` of (virtual) time and whose
/// listings also take `per_key` per key listed, returning what was there when they started:
/// the cost model of a real store, where a listing of a long log is slower than one append.
#[derive(Debug)]
struct SlowListings {
    inner: InMemory,
    op: Duration,
    per_key: Duration,
}

impl std::fmt::Display for SlowListings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlowListings({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for SlowListings {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        tokio::time::sleep(self.op).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        tokio::time::sleep(self.op).await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        tokio::time::sleep(self.op).await;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        // The snapshot is taken at once; the answer arrives after the listing's duration.
        let listed = self.inner.list(prefix);
        let (op, per_key) = (self.op, self.per_key);
        futures::stream::once(async move {
            let metas: Vec<object_store::Result<ObjectMeta>> = listed.collect().await;
            let keys = u32::try_from(metas.len()).unwrap_or(u32::MAX);
            tokio::time::sleep(op + per_key * keys).await;
            futures::stream::iter(metas)
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        tokio::time::sleep(self.op).await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        tokio::time::sleep(self.op).await;
        self.inner.copy_opts(from, to, options).await
    }
}

/// The race behind the heavier-member handover flake (fixed in 84fd0b3), replayed
/// deterministically: the active member appends every millisecond, and listing the log takes
/// 20 us per entry, so once the log holds a few hundred entries a listing is several appends
/// out of date when it returns. A claimant that re-listed the log after each lost create never
/// found a free number (its claim timed out, again and again, and the heavier member never took
/// over); one that steps to the next number wins within a few steps.
#[tokio::test(start_paused = true)]
async fn a_heavier_member_takes_over_from_a_primary_that_appends_faster_than_the_log_lists() {
    let mut group = Group::new(1);
    group.store = CheckpointStore::from_object_store(
        Arc::new(SlowListings {
            inner: InMemory::new(),
            op: Duration::from_micros(100),
            per_key: Duration::from_micros(20),
        }),
        Path::default(),
        Default::default(),
    );
    let (la, a_addr) = group.listen();
    let mut a = group.start("a", 10, (la, a_addr.clone()), &[]).await;
    let (_, a_se) = wait_for(&mut a, activated).await;

    // a appends every millisecond for as long as it is active.
    let handle = a.handle();
    let appends = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut acknowledged = Vec::new();
        while handle.active() == Some(a_se) {
            tick.tick().await;
            match handle.append(Bytes::from_static(b"work")).await {
                Ok(seq) => acknowledged.push(seq),
                Err(err) => {
                    assert!(
                        err.is_fenced() || err.to_string().contains("not active"),
                        "{err}"
                    );
                    break;
                }
            }
        }
        acknowledged
    });
    let log = a.log().clone();
    let deadline = Instant::now() + PATIENCE;
    while log.newest().await.unwrap() < 300 {
        assert!(Instant::now() < deadline, "a appended too slowly");
        tokio::time::sleep(Duration::from_millis(50)).await; // virtual time passes
    }
    // One listing of 300 entries takes 6 ms: six of a's appends.

    let joined = Instant::now();
    let mut n = group.start("n", 50, group.listen(), &[a_addr]).await;
    let (n_at, n_se) = wait_for(&mut n, activated).await;
    assert_eq!(n_se, SlotEpoch { slot: 0, epoch: 2 });
    let took = n_at - joined;
    // n decides after one activation interval of its own, then claims (a few listings and one
    // step per lost race); a failed claim would cost claim_timeout (10 s) and a stand-by.
    assert!(
        took <= 2 * ACT + Duration::from_millis(200),
        "the handover took {took:?}"
    );
    let (_, reason) = wait_for(&mut a, |e| match e {
        MemberEvent::Deactivate { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(
            reason,
            DeactivateReason::Superseded { epoch: 2, .. } | DeactivateReason::Fenced { by: 2 }
        ),
        "{reason:?}"
    );
    let acknowledged = appends.await.unwrap();

    // Every acknowledged append of a precedes n's fence, and nothing of a's follows it.
    let entries = n.log().read_from(1).await.unwrap();
    let fence = entries
        .iter()
        .find(|e| e.writer == n_se && matches!(e.kind, EntryKind::Fence { .. }))
        .expect("n's fence is in the log")
        .seq;
    assert!(acknowledged.iter().all(|&seq| seq < fence), "{fence}");
    assert!(
        entries
            .iter()
            .filter(|e| e.seq > fence)
            .all(|e| e.writer != a_se),
        "a committed after n's fence"
    );
    assert!(acknowledged.len() >= 300, "{}", acknowledged.len());
}
