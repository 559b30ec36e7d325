//! An object's queues (its mailbox and its control queue): unbounded, many senders, one
//! receiver, like tokio's unbounded channel, but allocating nothing until a message arrives
//! and nothing once it is drained. Tokio's channel allocates a block of 32 slots for each
//! channel up front (about 3 KiB for 64-byte messages in their envelopes, two queues per
//! object), which dominated the memory of a cohort of many idle objects.
//!
//! The queues of one object share a [`Parking`]: while the object has nothing to do, its task
//! ends and what it holds waits there, resumed by the next send to either queue (or the drop
//! of a queue's last sender, so that it sees the end). An idle object then costs no tokio
//! task (about 1 KiB: the task's future and header).

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use std::task::Poll;

use futures::task::AtomicWaker;
pub(crate) use tokio::sync::mpsc::error::TryRecvError;

/// A queue drained to empty keeps at most this much room; more is given back.
const KEEP_CAPACITY: usize = 16;

struct Shared<T> {
    state: Mutex<State<T>>,
    senders: AtomicUsize,
    /// Wakes the receiver: a message arrived, or the last sender left. One waker, since a
    /// queue has one receiver (a `Notify` keeps a list of waiters: 8 bytes more a queue).
    arrived: AtomicWaker,
    /// Where the receiver's task may be parked.
    parking: Option<Arc<Parking>>,
}

struct State<T> {
    queue: VecDeque<T>,
    /// The receiver closed the queue (or is gone): sends fail.
    closed: bool,
}

impl<T> Shared<T> {
    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A new queue: its sender and its receiver.
#[cfg(test)]
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    channel_of(None)
}

/// A new queue whose receiver's task may park in `parking`: each send, and the drop of the
/// last sender, resumes it.
pub(crate) fn parked_channel<T>(parking: &Arc<Parking>) -> (Sender<T>, Receiver<T>) {
    channel_of(Some(Arc::clone(parking)))
}

fn channel_of<T>(parking: Option<Arc<Parking>>) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            closed: false,
        }),
        senders: AtomicUsize::new(1),
        arrived: AtomicWaker::new(),
        parking,
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

/// Sends into a queue. Cheap to clone.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `value`; gives it back if the receiver closed the queue or is gone.
    pub(crate) fn send(&self, value: T) -> Result<(), T> {
        Self::push(&self.shared, value)
    }

    fn push(shared: &Shared<T>, value: T) -> Result<(), T> {
        {
            let mut state = shared.state();
            if state.closed {
                return Err(value);
            }
            state.queue.push_back(value);
        }
        shared.arrived.wake();
        if let Some(parking) = &shared.parking {
            parking.wake();
        }
        Ok(())
    }

    /// Closes the queue from the sending side, as the receiver's drop would: every later send
    /// fails at once and what is queued is dropped. A parked receiver is woken to see the end.
    /// What a host does to each object as it stops, so that no address takes a message after
    /// the stop returns, whether its object is parked or its task is still being aborted.
    pub(crate) fn close(&self) {
        let queued = {
            let mut state = self.shared.state();
            state.closed = true;
            std::mem::take(&mut state.queue)
        };
        drop(queued);
        self.shared.arrived.wake();
        if let Some(parking) = &self.shared.parking {
            parking.wake();
        }
    }
}

impl<T> Sender<T> {
    /// A reference that sends into this queue without counting as a sender.
    pub(crate) fn reference(&self) -> SenderRef<T> {
        SenderRef {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Sends into a queue like a [`Sender`] but does not keep it open: the receiver still sees the
/// end when the last `Sender` drops. What an object keeps of its own control queue, so that
/// its host can reach it from its tally without the object holding itself open.
pub(crate) struct SenderRef<T> {
    shared: Arc<Shared<T>>,
}

impl<T> SenderRef<T> {
    /// Queues `value`; gives it back if the queue is closed or its receiver is gone.
    pub(crate) fn send(&self, value: T) -> Result<(), T> {
        Sender::push(&self.shared, value)
    }
}

impl<T> Clone for SenderRef<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> std::fmt::Debug for SenderRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SenderRef")
    }
}

/// A queue's sender with its message type erased: what a host's table keeps of an object's
/// mailbox, to hand out typed addresses (by downcast) and to close it when the host stops.
pub(crate) trait AnySender: Send + Sync {
    /// The `Sender<T>` itself, to downcast.
    fn as_any(&self) -> &(dyn Any + Send + Sync);
    /// [`Sender::close`].
    fn close(&self);
    /// The Rust type of the object the queue belongs to, for errors and typed lookups.
    fn object_type(&self) -> &'static str;
    /// The Rust type of the messages it takes, for errors.
    fn message_type(&self) -> &'static str;
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::SeqCst);
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.arrived.wake();
            if let Some(parking) = &self.shared.parking {
                parking.wake();
            }
        }
    }
}

/// Receives from a queue.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// The next message, if one is queued; [`TryRecvError::Disconnected`] when none is and
    /// none can come.
    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.shared.state();
        if let Some(value) = state.queue.pop_front() {
            if state.queue.is_empty() && state.queue.capacity() > KEEP_CAPACITY {
                state.queue = VecDeque::new();
            }
            return Ok(value);
        }
        if state.closed || self.shared.senders.load(Ordering::SeqCst) == 0 {
            Err(TryRecvError::Disconnected)
        } else {
            Err(TryRecvError::Empty)
        }
    }

    /// The next message; `None` once none is queued and none can come (every sender gone, or
    /// the queue closed). Cancel-safe: a message is taken only by the call that returns it.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(next) = self.poll_next() {
                return Poll::Ready(next);
            }
            // Registered before the second look: a send between the two wakes this waker, so
            // no wakeup is lost.
            self.shared.arrived.register(cx.waker());
            self.poll_next()
        })
        .await
    }

    /// [`try_recv`](Self::try_recv) as a poll: pending while the queue is empty and open.
    fn poll_next(&mut self) -> Poll<Option<T>> {
        match self.try_recv() {
            Ok(value) => Poll::Ready(Some(value)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }

    /// Gives back the room of a drained queue: what a task does before it parks, so that a
    /// parked object holds no queue buffer (about 100 bytes for a control queue once used).
    pub(crate) fn release_room(&mut self) {
        let mut state = self.shared.state();
        if state.queue.is_empty() && state.queue.capacity() > 0 {
            state.queue = VecDeque::new();
        }
    }

    /// Refuses further sends; what is queued can still be received.
    pub(crate) fn close(&mut self) {
        self.shared.state().closed = true;
    }

    /// Whether [`try_recv`](Self::try_recv) would return something other than
    /// [`TryRecvError::Empty`]: a message, or the end.
    pub(crate) fn ready(&self) -> bool {
        let state = self.shared.state();
        !state.queue.is_empty() || state.closed || self.shared.senders.load(Ordering::SeqCst) == 0
    }
}

/// A task that can wait in a [`Parking`], boxed: parking moves the box in and resuming moves
/// it out, so that a task is allocated once for its whole life rather than at every park (the
/// allocations of a million parks, interleaved with the tasks ending around them, scattered
/// the parked tasks over pages that stayed resident).
pub(crate) trait Parked: Send + 'static {
    /// Starts the task again, on the thread of the send that woke it.
    fn resume(self: Box<Self>);
}

/// Where an object's task waits, without a tokio task, while it has nothing to do (see the
/// [module docs](self)).
///
/// A send and a park cannot miss each other: the task raises `parked` before it looks at its
/// queues, and a sender looks at `parked` after it queued. Either the task sees the message and
/// stays, or the sender sees the flag and, under the lock the task parks under, takes the
/// parked task and resumes it.
#[derive(Default)]
pub(crate) struct Parking {
    parked: AtomicBool,
    resume: Mutex<Option<Box<dyn Parked>>>,
}

impl Parking {
    /// Parks `task` unless `ready(&task)` (asked once the park is visible to senders) says
    /// it has input: then gives it back to go on. A parked task is resumed by
    /// [`Parked::resume`], on the thread of the send that wakes it.
    pub(crate) fn park<T: Parked>(
        &self,
        task: Box<T>,
        ready: impl FnOnce(&T) -> bool,
    ) -> Option<Box<T>> {
        let mut slot = self.resume.lock().unwrap_or_else(PoisonError::into_inner);
        self.parked.store(true, Ordering::SeqCst);
        if ready(&task) {
            self.parked.store(false, Ordering::SeqCst);
            return Some(task);
        }
        *slot = Some(task);
        None
    }

    /// Resumes the parked task, if there is one.
    fn wake(&self) {
        if !self.parked.load(Ordering::SeqCst) {
            return;
        }
        let resume = {
            let mut slot = self.resume.lock().unwrap_or_else(PoisonError::into_inner);
            self.parked.store(false, Ordering::SeqCst);
            slot.take()
        };
        // Outside the lock: resuming spawns, and may drop what the task held.
        if let Some(task) = resume {
            task.resume();
        }
    }

    /// Whether a task is parked here.
    #[cfg(test)]
    pub(crate) fn is_parked(&self) -> bool {
        self.parked.load(Ordering::SeqCst)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let queued = {
            let mut state = self.shared.state();
            state.closed = true;
            std::mem::take(&mut state.queue)
        };
        // Dropped outside the lock: a message's drop may send.
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_arrive_in_order_and_the_end_is_seen() {
        let (tx, mut rx) = channel();
        let tx2 = tx.clone();
        tx.send(1).unwrap();
        tx2.send(2).unwrap();
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(tx);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(tx2);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_message_and_for_the_last_sender() {
        let (tx, mut rx) = channel::<u32>();
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            let end = rx.recv().await;
            (first, end)
        });
        tokio::task::yield_now().await;
        tx.send(7).unwrap();
        drop(tx);
        assert_eq!(waiting.await.unwrap(), (Some(7), None));
    }

    #[tokio::test]
    async fn a_sender_reference_sends_without_keeping_the_queue_open() {
        let (tx, mut rx) = channel::<u32>();
        let reference = tx.reference();
        reference.send(1).unwrap();
        drop(tx);
        // What it sent arrives; then the receiver sees the end, the reference notwithstanding.
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, None);
        drop(rx);
        assert_eq!(reference.send(2), Err(2));
    }

    #[tokio::test]
    async fn a_closed_queue_refuses_sends_and_keeps_what_it_holds() {
        let (tx, mut rx) = channel();
        tx.send("kept").unwrap();
        rx.close();
        assert_eq!(tx.send("refused"), Err("refused"));
        assert_eq!(rx.recv().await, Some("kept"));
        assert_eq!(rx.recv().await, None);
        drop(rx);
        assert!(tx.send("after").is_err());
    }

    #[test]
    fn a_sender_closing_the_queue_refuses_sends_and_wakes_the_parked_receiver() {
        static RESUMED: Mutex<Option<Receiver<u8>>> = Mutex::new(None);
        struct Stash(Receiver<u8>);
        impl Parked for Stash {
            fn resume(self: Box<Self>) {
                *RESUMED.lock().unwrap() = Some(self.0);
            }
        }
        let parking = Arc::new(Parking::default());
        let (tx, rx) = parked_channel::<u8>(&parking);
        let other = tx.clone();
        tx.send(1).unwrap();
        let parked = parking.park(Box::new(Stash(rx)), |_| false);
        assert!(parked.is_none() && parking.is_parked());
        tx.close();
        let mut rx = RESUMED
            .lock()
            .unwrap()
            .take()
            .expect("the close resumes the receiver");
        assert_eq!(other.send(2), Err(2));
        assert_eq!(
            rx.try_recv(),
            Err(TryRecvError::Disconnected),
            "what was queued is dropped"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_lost_between_many_senders_and_a_racing_receiver() {
        let (tx, mut rx) = channel::<u64>();
        let senders: Vec<_> = (0..4u64)
            .map(|s| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    for i in 0..10_000 {
                        tx.send(s * 1_000_000 + i).unwrap();
                        if i % 64 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let mut next = [0u64; 4];
        while let Some(v) = rx.recv().await {
            let (s, i) = ((v / 1_000_000) as usize, v % 1_000_000);
            assert_eq!(i, next[s], "sender {s}'s messages out of order");
            next[s] += 1;
        }
        for s in senders {
            s.await.unwrap();
        }
        assert_eq!(next, [10_000; 4]);
    }

    /// A stand-in for an object's task: drains its queue, parks, and is resumed on a thread
    /// of its own (as a task is on a runtime), counting what it received.
    struct Drainer {
        rx: Receiver<u64>,
        parking: Arc<Parking>,
        got: Arc<std::sync::mpsc::Sender<u64>>,
    }

    impl Drainer {
        fn run(mut self: Box<Self>) {
            loop {
                loop {
                    match self.rx.try_recv() {
                        Ok(v) => {
                            let _ = self.got.send(v);
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return,
                    }
                }
                let parking = Arc::clone(&self.parking);
                match parking.park(self, |d| d.rx.ready()) {
                    Some(again) => self = again,
                    None => return,
                }
            }
        }
    }

    impl Parked for Drainer {
        fn resume(self: Box<Self>) {
            std::thread::spawn(move || self.run());
        }
    }

    #[test]
    fn a_parked_receiver_misses_no_send_that_races_its_park() {
        let parking = Arc::new(Parking::default());
        let (tx, rx) = parked_channel::<u64>(&parking);
        let (got_tx, got) = std::sync::mpsc::channel();
        let drainer = Drainer {
            rx,
            parking: Arc::clone(&parking),
            got: Arc::new(got_tx),
        };
        assert!(parking.park(Box::new(drainer), |d| d.rx.ready()).is_none());
        assert!(parking.is_parked());
        // Each send may find the drainer running, parking, or parked: each must arrive.
        let senders: Vec<_> = (0..4u64)
            .map(|s| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        tx.send(s * 1_000_000 + i).unwrap();
                        if i % 16 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        let mut next = [0u64; 4];
        for _ in 0..20_000 {
            let v = got
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("a message sent while the receiver parked was never received");
            let (s, i) = ((v / 1_000_000) as usize, v % 1_000_000);
            assert_eq!(i, next[s], "sender {s}'s messages out of order");
            next[s] += 1;
        }
        // In lockstep, every send is the last one for a while: one that the park missed
        // would stay queued for good.
        for i in 0..5_000u64 {
            tx.send(i).unwrap();
            let v = got
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("a message sent as the receiver parked stayed queued");
            assert_eq!(v, i);
        }
        // The last sender's drop resumes it once more; it sees the end and stops for good.
        drop(tx);
        assert!(
            got.recv_timeout(std::time::Duration::from_secs(30))
                .is_err()
        );
    }

    #[test]
    fn a_park_with_input_waiting_gives_the_task_back() {
        let parking = Parking::default();
        let (tx, rx) = parked_channel::<u8>(&Arc::new(Parking::default()));
        tx.send(1).unwrap();
        struct Unreachable(Receiver<u8>);
        impl Parked for Unreachable {
            fn resume(self: Box<Self>) {
                unreachable!("not parked")
            }
        }
        let back = parking.park(Box::new(Unreachable(rx)), |task| task.0.ready());
        assert!(back.is_some());
        assert!(!parking.is_parked());
    }

    #[test]
    fn an_empty_queue_holds_no_buffer() {
        let (tx, mut rx) = channel();
        for i in 0..1_000 {
            tx.send(i).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert!(rx.shared.state().queue.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn a_released_queue_holds_no_room_and_keeps_what_is_queued() {
        let (tx, mut rx) = channel();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        rx.release_room();
        assert_eq!(rx.try_recv(), Ok(1), "a queue with messages keeps them");
        assert_eq!(rx.try_recv(), Ok(2));
        assert!(rx.shared.state().queue.capacity() > 0);
        rx.release_room();
        assert_eq!(rx.shared.state().queue.capacity(), 0);
        tx.send(3).unwrap();
        assert_eq!(rx.try_recv(), Ok(3), "the queue still takes messages");
    }
}
