//! The ingress endpoint: inputs submitted over TCP by an `IngressClient`, acknowledged once
//! durable in the log, applied once by the cohort; the client resends what a cut connection
//! left unanswered, and the endpoint refuses (and never stores) inputs the cohort could not
//! apply.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cohort_checkpoint::ingress::{IngressLog, IngressOptions};
use cohort_checkpoint::{CheckpointStore, StoreOptions};
use cohort_coordinator::ingress::endpoint::{
    IngressClient, IngressClientOptions, IngressReply, IngressRequest, listen_config,
};
use cohort_coordinator::ingress::{Ingress, LogHandle, Polling};
use cohort_coordinator::{Actor, Cohort, Context, Error};
use cohort_object_api::{Checkpointable, EncodedState, ObjectError, ObjectId, Snapshot};
use cohort_wire::{CancellationToken, ConnectConfig, Role};
use serde::{Deserialize, Serialize};
use support::proxy::{Options, Proxy};

const TALLY: &str = "test.Tally";

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Add(i64);

/// Adds up what it is sent.
#[derive(Default)]
struct Tally {
    sum: i64,
    generation: u64,
}

#[async_trait]
impl Checkpointable for Tally {
    fn type_name(&self) -> &'static str {
        TALLY
    }

    async fn capture(&self) -> Result<Snapshot, ObjectError> {
        Ok(Snapshot::new(TALLY, 1, self.sum))
    }

    async fn restore(&mut self, state: &EncodedState) -> Result<(), ObjectError> {
        state.check(TALLY, 1)?;
        self.sum = state.decode()?;
        self.generation += 1;
        Ok(())
    }

    fn generation(&self) -> Option<u64> {
        Some(self.generation)
    }
}

#[async_trait]
impl Actor for Tally {
    type Message = Add;

    const MESSAGE_DRIVEN: bool = true;

    async fn handle(&mut self, add: Add, _ctx: &mut Context<'_>) -> Result<(), ObjectError> {
        self.sum += add.0;
        self.generation += 1;
        Ok(())
    }
}

fn tally(i: u64) -> ObjectId {
    ObjectId::indexed("tally", i).unwrap()
}

const TALLIES: u64 = 4;

/// An in-process cohort of tallies fed by ingress log `adds`, served on a loopback port.
struct Served {
    _dir: tempfile::TempDir,
    store: CheckpointStore,
    cohort: Cohort,
    ingress: Arc<Ingress<Add>>,
    polling: Polling,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Served {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), StoreOptions::default())
            .await
            .unwrap();
        let cohort = Cohort::builder(store.clone()).build().await.unwrap();
        for i in 0..TALLIES {
            cohort.spawn(tally(i), Tally::default()).unwrap();
        }
        let log = IngressLog::open(&store, "adds", IngressOptions::default())
            .await
            .unwrap();
        let (source, poller, ingress) = Ingress::<Add>::new(log);
        let poll = cohort
            .spawn(ObjectId::new("ingress-adds").unwrap(), source)
            .unwrap();
        let polling = poller.start(poll);
        let ingress = Arc::new(ingress);
        let listener = listen_config(SocketAddr::from(([127, 0, 0, 1], 0)))
            .bind()
            .await
            .unwrap();
        let addr = listener.local_addr();
        let stop = CancellationToken::new();
        let resolver = cohort.clone();
        tokio::spawn(Arc::clone(&ingress).serve(
            listener,
            move |id| resolver.address::<Add>(id),
            stop.clone(),
        ));
        Self {
            _dir: dir,
            store,
            cohort,
            ingress,
            polling,
            addr,
            stop,
        }
    }

    /// Waits until the source has sent every stored input, then takes a checkpoint and
    /// returns the sum of the tallies in it.
    async fn applied_sum(&self) -> i64 {
        let end = self.ingress.log().get().unwrap().end();
        let mut waited = 0;
        while self.polling.next() < end {
            assert!(waited < 3_000, "the source did not reach {end} within 30 s");
            waited += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let id = self.cohort.trigger().await.unwrap();
        let manifest = self.store.read_manifest(id).await.unwrap();
        let mut sum = 0;
        for (_, state) in self.store.read_states(&manifest).await.unwrap() {
            if state.tag().type_name == TALLY {
                sum += state.decode::<i64>().unwrap();
            }
        }
        for (_, message) in self.store.read_in_transit(&manifest).await.unwrap() {
            sum += message.decode::<Add>().unwrap().0;
        }
        sum
    }
}

fn client(name: &str, endpoint: SocketAddr) -> IngressClient<Add> {
    IngressClient::new(IngressClientOptions::new(name, vec![endpoint.to_string()])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_survive_cut_connections_and_are_applied_once() {
    let served = Served::start().await;
    // Raw: bytes pass through unread, and a cut drops both sockets mid-frame.
    let proxy = Proxy::start_with(
        served.addr,
        Options {
            raw: true,
            ..Options::default()
        },
    )
    .await;
    let client = client("teller-1", proxy.addr());
    const INPUTS: u64 = 2_000;
    let mut submits = tokio::task::JoinSet::new();
    for seq in 1..=INPUTS {
        let client = client.clone();
        submits.spawn(async move {
            client
                .submit(seq, &tally(seq % TALLIES), &Add(seq as i64))
                .await
        });
    }
    // Cut every connection once a part is stored, while the rest is in flight, then let the
    // client reconnect: it resends whatever it has no acknowledgement for.
    let mut durable = served.ingress.log().subscribe();
    durable.wait_for(|end| *end >= INPUTS / 4).await.unwrap();
    proxy.cut();
    proxy.heal();
    while let Some(done) = submits.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(
        served.ingress.log().get().unwrap().end(),
        INPUTS,
        "every input is stored once, resends included"
    );
    // A retry of an acknowledged input is a duplicate, stored no more.
    let again = client.submit(7, &tally(3), &Add(7)).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(served.ingress.log().get().unwrap().end(), INPUTS);
    let expected: i64 = (1..=INPUTS as i64).sum();
    assert_eq!(served.applied_sum().await, expected);
    served.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_the_cohort_cannot_apply_are_refused_and_not_stored() {
    let served = Served::start().await;
    let client = client("teller-2", served.addr);
    client.submit(1, &tally(0), &Add(5)).await.unwrap();

    let nobody = ObjectId::new("nobody").unwrap();
    let refused = client.submit(2, &nobody, &Add(1)).await.unwrap_err();
    assert!(
        matches!(&refused, Error::InputRefused { seq: 2, reason, .. } if reason.contains("nobody")),
        "{refused}"
    );

    // A peer speaking the wire by hand: a payload that is not an `Add`, and a target that is
    // not an object id.
    let mut connect = ConnectConfig::new(Role::Client, "hand");
    connect.accept_roles = vec![Role::Node];
    let mut raw = connect
        .connect::<IngressReply, IngressRequest>(served.addr)
        .await
        .unwrap();
    raw.send(&IngressRequest::Submit {
        seq: 1,
        to: tally(1).as_str().to_owned(),
        payload: Bytes::from_static(b"\xc1 not msgpack"),
    })
    .await
    .unwrap();
    let reply = raw.recv().await.unwrap().unwrap();
    assert!(
        matches!(&reply, IngressReply::Refused { seq: 1, retry: false, reason } if reason.contains("msgpack")),
        "{reply:?}"
    );
    raw.send(&IngressRequest::Submit {
        seq: 2,
        to: "no spaces allowed".into(),
        payload: Bytes::from(rmp_serde::to_vec(&Add(1)).unwrap()),
    })
    .await
    .unwrap();
    let reply = raw.recv().await.unwrap().unwrap();
    assert!(
        matches!(&reply, IngressReply::Refused { seq: 2, retry: false, reason } if reason.contains("object id")),
        "{reply:?}"
    );

    assert_eq!(
        served.ingress.log().get().unwrap().end(),
        1,
        "nothing refused was stored"
    );
    assert_eq!(served.applied_sum().await, 5);
    served.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_no_endpoint_answers_fails_at_its_deadline() {
    // A port nobody listens on (bound, then closed).
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut options = IngressClientOptions::new("teller-3", vec![gone.to_string()]);
    options.deadline = Duration::from_millis(300);
    let client = IngressClient::<Add>::new(options).unwrap();
    let failed = client.submit(1, &tally(0), &Add(1)).await.unwrap_err();
    assert!(
        matches!(&failed, Error::Unacknowledged { seq: 1, last, .. } if last.contains(&gone.to_string())),
        "{failed}"
    );
    assert!(failed.is_retryable());

    let bad = IngressClient::<Add>::new(IngressClientOptions::new("teller-4", Vec::new()));
    assert!(matches!(bad, Err(Error::InvalidConfig { .. })));
    let bad = IngressClient::<Add>::new(IngressClientOptions::new(
        "tab\there",
        vec![gone.to_string()],
    ));
    assert!(matches!(bad, Err(Error::InvalidConfig { .. })));
}

/// A log is written where its source runs: an ingress on a [`LogHandle`] refuses inputs
/// (`IngressElsewhere`, retryable) until a source of the log starts in the process, opens the
/// log at the first input then, applies it through the self-polling source, and closes the
/// log once the source is gone (so that another process may open it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_is_served_only_where_its_source_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), StoreOptions::default())
        .await
        .unwrap();
    let handle = LogHandle::new(&store, "adds", IngressOptions::default());
    let ingress = Ingress::<Add>::on(handle.clone());
    let cohort = Cohort::builder(store.clone()).build().await.unwrap();
    let to = cohort.spawn(tally(0), Tally::default()).unwrap();
    let refused = ingress.submit("c", 1, &to, &Add(5)).await.unwrap_err();
    assert!(
        matches!(&refused, Error::IngressElsewhere { log } if log == "adds"),
        "{refused}"
    );
    assert!(refused.is_retryable());
    assert!(handle.get().is_none(), "nothing opened the log");

    cohort
        .spawn(
            ObjectId::new("ingress-adds").unwrap(),
            handle.source::<Add>(),
        )
        .unwrap();
    assert!(handle.hosts_source());
    let ack = ingress.submit("c", 1, &to, &Add(5)).await.unwrap();
    assert_eq!((ack.position, ack.duplicate), (0, false));
    // Nobody started a poller: the source polls itself.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = cohort.trigger().await.unwrap();
            let manifest = store.read_manifest(line).await.unwrap();
            let states = store.read_states(&manifest).await.unwrap();
            let sum: i64 = states
                .iter()
                .filter(|(_, s)| s.tag().type_name == TALLY)
                .map(|(_, s)| s.decode::<i64>().unwrap())
                .sum();
            if sum == 5 {
                return;
            }
        }
    })
    .await
    .expect("the input was applied within 30 s");

    cohort.shutdown().await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while handle.get().is_some() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the log closed once its source was gone");
    assert!(!handle.hosts_source());
    // Closed: the log can be opened again (by another process, or here), once the work in
    // flight that holds it (a truncation after the last commit) is done.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match IngressLog::open(&store, "adds", IngressOptions::default()).await {
                Ok(_) => return,
                Err(cohort_checkpoint::Error::LogWriterElsewhere { .. }) => {
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the log was released within 30 s");
}
