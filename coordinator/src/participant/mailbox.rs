//! An object's queues (its inbox and its control queue), where its task parks, and what its
//! host decides about it without waking it ([`Participation`]): one allocation per object, its
//! [`Cell`]. A million idle objects hold a million cells, so a cell allocates nothing for its
//! queues until a message arrives and gives their room back once they are drained (tokio's
//! unbounded channel allocates a block of 32 slots up front: about 3 KiB an object for two
//! queues of 64-byte messages), and it holds everything under one lock (four allocations and
//! four locks before, about 160 bytes more an object).
//!
//! While the object has nothing to do, its task ends and what it holds parks in the cell,
//! resumed by the next input it waits for (a control message; a message, unless it is held)
//! or by the end of its control queue (the last [`Handle`] dropped). An idle object then
//! costs no tokio task (about 1 KiB: the task's future and header).
//!
//! Who holds what: the task holds the [`Receiver`]; the host's table holds a [`Handle`], which
//! keeps the control queue open; addresses hold a [`Sender`] of the inbox; the host's tally and
//! an attempt's list of asked objects hold a [`Reference`], which sends control messages
//! without keeping the queue open.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

pub(crate) use tokio::sync::mpsc::error::TryRecvError;

use super::Participation;
use super::object::Control;

/// A queue drained to empty keeps at most this much room; more is given back.
const KEEP_CAPACITY: usize = 16;

/// One object's queues, its parking place and its participation (see the [module
/// docs](self)). `T` is what its inbox takes.
pub(crate) struct Cell<T> {
    queues: Mutex<Queues<T>>,
    /// The [`Handle`]s alive: the control queue ends when the last one is dropped.
    handles: AtomicUsize,
    /// Its own lock: the host's tally locks it under the tally's, never under `queues`.
    participation: Mutex<Participation>,
    /// The names of the object's and its messages' types (a function: 8 bytes, not 32).
    type_names: fn() -> TypeNames,
}

/// The Rust types of an object and of its messages, for errors and typed lookups.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TypeNames {
    pub(crate) object: &'static str,
    pub(crate) message: &'static str,
}

struct Queues<T> {
    inbox: VecDeque<T>,
    control: VecDeque<Control>,
    /// The inbox takes no more messages (the object stopped, or its host closed it).
    inbox_closed: bool,
    /// The control queue takes no more (the host closed it, or the task is gone).
    control_closed: bool,
    /// The task waiting in [`Receiver::recv`] or [`Receiver::recv_control`]: one waker, as a
    /// cell has one receiver.
    waiting: Option<Waker>,
    /// The task parked here while it has nothing to do.
    parked: Option<Box<dyn Parked>>,
    /// Whether a message wakes the parked task (a held object waits for control only). Kept
    /// apart from `parked`, beside the other flags: 8 bytes less a cell, a size class.
    parked_wants_messages: bool,
}

impl<T> Cell<T> {
    fn queues(&self) -> MutexGuard<'_, Queues<T>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the control queue has ended: closed, or no handle left.
    fn control_ended(&self, queues: &Queues<T>) -> bool {
        queues.control_closed || self.handles.load(Ordering::SeqCst) == 0
    }

    /// Whether the inbox has ended: closed, or the control queue ended (the object is gone
    /// from its host's table, and its task ends).
    fn inbox_ended(&self, queues: &Queues<T>) -> bool {
        queues.inbox_closed || self.control_ended(queues)
    }

    fn send_inbox(&self, value: T) -> Result<(), T> {
        let woken = {
            let mut q = self.queues();
            if self.inbox_ended(&q) {
                return Err(value);
            }
            q.inbox.push_back(value);
            Woken::take(&mut q, true)
        };
        woken.wake();
        Ok(())
    }

    fn send_control(&self, value: Control) -> Result<(), Control> {
        let woken = {
            let mut q = self.queues();
            if self.control_ended(&q) {
                return Err(value);
            }
            q.control.push_back(value);
            Woken::take(&mut q, false)
        };
        woken.wake();
        Ok(())
    }

    /// Closes both queues, dropping what they hold, and wakes the task to see the end.
    fn close(&self) {
        let (woken, queued) = {
            let mut q = self.queues();
            q.inbox_closed = true;
            q.control_closed = true;
            let queued = (std::mem::take(&mut q.inbox), std::mem::take(&mut q.control));
            (Woken::take(&mut q, false), queued)
        };
        // Outside the lock: a message's drop may send.
        drop(queued);
        woken.wake();
    }

    /// Wakes the task to see that the control queue ended.
    fn ended(&self) {
        Woken::take(&mut self.queues(), false).wake();
    }
}

/// What a send takes out of the cell to wake, outside its lock: the waiting task's waker, and
/// the parked task (resuming it spawns, and may drop what the task held).
struct Woken {
    waker: Option<Waker>,
    parked: Option<Box<dyn Parked>>,
}

impl Woken {
    /// Takes what wakes for an input to the inbox (`message`) or to the control queue.
    fn take<T>(queues: &mut Queues<T>, message: bool) -> Self {
        let parked = if message && !queues.parked_wants_messages {
            None
        } else {
            queues.parked.take()
        };
        Self {
            waker: queues.waiting.take(),
            parked,
        }
    }

    fn wake(self) {
        if let Some(waker) = self.waker {
            waker.wake();
        }
        if let Some(task) = self.parked {
            task.resume();
        }
    }
}

/// A new object's cell, for an object whose inbox takes `T` and whose types `type_names` names:
/// the handle its host keeps, a sender for its addresses, and the receiver its task owns. Not
/// clean, counted in no round.
pub(crate) fn cell<T: Send + 'static>(
    type_names: fn() -> TypeNames,
) -> (Handle, Sender<T>, Receiver<T>) {
    let cell = Arc::new(Cell {
        queues: Mutex::new(Queues {
            inbox: VecDeque::new(),
            control: VecDeque::new(),
            inbox_closed: false,
            control_closed: false,
            waiting: None,
            parked: None,
            parked_wants_messages: false,
        }),
        handles: AtomicUsize::new(1),
        participation: Mutex::new(Participation::default()),
        type_names,
    });
    (
        Handle(Reference(Arc::clone(&cell) as Arc<dyn AnyCell>)),
        Sender(Arc::clone(&cell)),
        Receiver(cell),
    )
}

/// A cell with its inbox's type erased: what the host reaches of an object.
trait AnyCell: Send + Sync {
    fn send_control(&self, value: Control) -> Result<(), Control>;
    fn close(&self);
    fn ended(&self);
    fn handles(&self) -> &AtomicUsize;
    fn participation(&self) -> &Mutex<Participation>;
    fn object_type(&self) -> &'static str;
    fn message_type(&self) -> &'static str;
    /// The `Cell<T>` itself, to downcast to its inbox's type.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl<T: Send + 'static> AnyCell for Cell<T> {
    fn send_control(&self, value: Control) -> Result<(), Control> {
        Cell::send_control(self, value)
    }

    fn close(&self) {
        Cell::close(self);
    }

    fn ended(&self) {
        Cell::ended(self);
    }

    fn handles(&self) -> &AtomicUsize {
        &self.handles
    }

    fn participation(&self) -> &Mutex<Participation> {
        &self.participation
    }

    fn object_type(&self) -> &'static str {
        (self.type_names)().object
    }

    fn message_type(&self) -> &'static str {
        (self.type_names)().message
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// Reaches an object's cell without keeping its control queue open: sends it control messages,
/// finds its participation and its inbox. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Reference(Arc<dyn AnyCell>);

impl Reference {
    /// Queues a control message; gives it back if the control queue ended.
    pub(crate) fn send_control(&self, value: Control) -> Result<(), Control> {
        self.0.send_control(value)
    }

    /// What the host decides about the object without waking it.
    pub(crate) fn participation(&self) -> &Mutex<Participation> {
        self.0.participation()
    }

    /// The Rust type of the object.
    pub(crate) fn object_type(&self) -> &'static str {
        self.0.object_type()
    }

    /// The Rust type of what its inbox takes.
    pub(crate) fn message_type(&self) -> &'static str {
        self.0.message_type()
    }

    /// A sender into the inbox, if it takes `T`.
    pub(crate) fn inbox<T: Send + 'static>(&self) -> Option<Sender<T>> {
        Arc::clone(&self.0)
            .into_any()
            .downcast::<Cell<T>>()
            .ok()
            .map(Sender)
    }
}

impl std::fmt::Debug for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Reference")
            .field(&self.object_type())
            .finish()
    }
}

/// What an object's host keeps of it: a [`Reference`] that keeps its control queue open. When
/// the last handle is dropped, the task sees the end and stops.
pub(crate) struct Handle(Reference);

impl Handle {
    /// A reference that does not keep the control queue open.
    pub(crate) fn reference(&self) -> Reference {
        self.0.clone()
    }

    /// Closes both queues, as the task's end would: every later send fails at once and what
    /// is queued is dropped; the task is woken to see the end. What a host does to each
    /// object as it stops, so that no address takes a message after the stop returns, whether
    /// its object is parked or its task is still being aborted.
    pub(crate) fn close(&self) {
        self.0.0.close();
    }
}

impl std::ops::Deref for Handle {
    type Target = Reference;

    fn deref(&self) -> &Reference {
        &self.0
    }
}

impl Clone for Handle {
    fn clone(&self) -> Self {
        self.0.0.handles().fetch_add(1, Ordering::SeqCst);
        Self(self.0.clone())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.0.0.handles().fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.0.ended();
        }
    }
}

/// Sends into an object's inbox: what an address holds. Cheap to clone; it does not keep the
/// object alive (its host's handle does).
pub(crate) struct Sender<T>(Arc<Cell<T>>);

impl<T> Sender<T> {
    /// Queues `value`; gives it back if the inbox ended.
    pub(crate) fn send(&self, value: T) -> Result<(), T> {
        self.0.send_inbox(value)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

/// The task's end of an object's cell: receives from both queues and parks the task.
pub(crate) struct Receiver<T>(Arc<Cell<T>>);

impl<T: Send + 'static> Receiver<T> {
    /// A reference to the cell, for the host's tally.
    pub(crate) fn reference(&self) -> Reference {
        Reference(Arc::clone(&self.0) as Arc<dyn AnyCell>)
    }
}

impl<T> Receiver<T> {
    /// What the host decides about the object without waking it.
    pub(crate) fn participation(&self) -> &Mutex<Participation> {
        &self.0.participation
    }

    /// The next control message, if one is queued; [`TryRecvError::Disconnected`] when none
    /// is and none can come.
    pub(crate) fn try_recv_control(&mut self) -> Result<Control, TryRecvError> {
        let mut q = self.0.queues();
        if let Some(value) = pop(&mut q.control) {
            return Ok(value);
        }
        if self.0.control_ended(&q) {
            Err(TryRecvError::Disconnected)
        } else {
            Err(TryRecvError::Empty)
        }
    }

    /// The next message of the inbox, if one is queued; [`TryRecvError::Disconnected`] when
    /// none is and none can come.
    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut q = self.0.queues();
        if let Some(value) = pop(&mut q.inbox) {
            return Ok(value);
        }
        if self.0.inbox_ended(&q) {
            Err(TryRecvError::Disconnected)
        } else {
            Err(TryRecvError::Empty)
        }
    }

    /// The next control message; `None` once none is queued and none can come. Cancel-safe:
    /// a message is taken only by the call that returns it.
    pub(crate) async fn recv_control(&mut self) -> Option<Control> {
        std::future::poll_fn(|cx| self.poll(cx, |r| outcome(r.try_recv_control()))).await
    }

    /// The next message of the inbox; `None` once none is queued and none can come.
    /// Cancel-safe.
    #[cfg(test)]
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll(cx, |r| outcome(r.try_recv()))).await
    }

    /// The next input, control first (a prepare must not wait behind a long inbox): what a
    /// running task waits for. Cancel-safe.
    pub(crate) async fn recv_any(&mut self) -> Input<T> {
        std::future::poll_fn(|cx| {
            self.poll(cx, |r| match outcome(r.try_recv_control()) {
                Some(control) => Some(Input::Control(control)),
                None => outcome(r.try_recv()).map(Input::Message),
            })
        })
        .await
    }

    /// `next(self)` once it is something (`Some`), registering the task's waker while not.
    fn poll<V>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        next: impl Fn(&mut Self) -> Option<V>,
    ) -> Poll<V> {
        if let Some(value) = next(self) {
            return Poll::Ready(value);
        }
        {
            let mut q = self.0.queues();
            match &q.waiting {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => q.waiting = Some(cx.waker().clone()),
            }
        }
        // Registered before the second look: a send between the two wakes this waker, so no
        // wakeup is lost.
        next(self).map_or(Poll::Pending, Poll::Ready)
    }

    /// Gives back the room of drained queues: what a task does before it parks, so that a
    /// parked object holds no queue buffer (about 100 bytes for a control queue once used).
    pub(crate) fn release_room(&mut self) {
        let mut q = self.0.queues();
        if q.inbox.is_empty() && q.inbox.capacity() > 0 {
            q.inbox = VecDeque::new();
        }
        if q.control.is_empty() && q.control.capacity() > 0 {
            q.control = VecDeque::new();
        }
    }

    /// Refuses further messages to the inbox; what is queued can still be received.
    pub(crate) fn close(&mut self) {
        self.0.queues().inbox_closed = true;
    }

    /// Whether [`try_recv_control`](Self::try_recv_control) would return something other
    /// than [`TryRecvError::Empty`].
    pub(crate) fn control_ready(&self) -> bool {
        let q = self.0.queues();
        !q.control.is_empty() || self.0.control_ended(&q)
    }

    /// Whether [`try_recv`](Self::try_recv) would return something other than
    /// [`TryRecvError::Empty`].
    pub(crate) fn ready(&self) -> bool {
        let q = self.0.queues();
        !q.inbox.is_empty() || self.0.inbox_ended(&q)
    }

    /// Where the task that owns this receiver parks.
    pub(crate) fn parking(&self) -> Parking<T> {
        Parking(Arc::clone(&self.0))
    }
}

/// What [`Receiver::recv_any`] found: a control message or a message of the inbox, `None`
/// when that queue ended.
pub(crate) enum Input<T> {
    Control(Option<Control>),
    Message(Option<T>),
}

/// What a `try_recv` result says once it says something: a value, or the end (`None`).
fn outcome<V>(result: Result<V, TryRecvError>) -> Option<Option<V>> {
    match result {
        Ok(value) => Some(Some(value)),
        Err(TryRecvError::Disconnected) => Some(None),
        Err(TryRecvError::Empty) => None,
    }
}

/// The next value of `queue`, giving back a drained queue's room beyond [`KEEP_CAPACITY`].
fn pop<V>(queue: &mut VecDeque<V>) -> Option<V> {
    let value = queue.pop_front()?;
    if queue.is_empty() && queue.capacity() > KEEP_CAPACITY {
        *queue = VecDeque::new();
    }
    Some(value)
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let queued = {
            let mut q = self.0.queues();
            q.inbox_closed = true;
            q.control_closed = true;
            q.waiting = None;
            (std::mem::take(&mut q.inbox), std::mem::take(&mut q.control))
        };
        // Dropped outside the lock: a message's drop may send.
        drop(queued);
    }
}

/// A task that can wait in its cell, boxed: parking moves the box in and resuming moves it
/// out, so that a task is allocated once for its whole life rather than at every park (the
/// allocations of a million parks, interleaved with the tasks ending around them, scattered
/// the parked tasks over pages that stayed resident).
pub(crate) trait Parked: Send + 'static {
    /// Starts the task again, on the thread of the send that woke it.
    fn resume(self: Box<Self>);
}

/// Where a task waits, without a tokio task, while it has nothing to do (see the [module
/// docs](self)). A send and a park cannot miss each other: both happen under the cell's lock.
pub(crate) struct Parking<T>(Arc<Cell<T>>);

impl<T> Parking<T> {
    /// Parks `task` unless input it waits for is queued (a control message, or the end of
    /// the control queue; a message too if `wants_messages`): then gives it back to go on. A
    /// parked task is resumed by [`Parked::resume`], on the thread of the send that wakes it.
    pub(crate) fn park<P: Parked>(self, task: Box<P>, wants_messages: bool) -> Option<Box<P>> {
        let mut q = self.0.queues();
        let ready = !q.control.is_empty()
            || self.0.control_ended(&q)
            || (wants_messages && (!q.inbox.is_empty() || self.0.inbox_ended(&q)));
        if ready {
            return Some(task);
        }
        q.parked = Some(task);
        q.parked_wants_messages = wants_messages;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_cell<T: Send + 'static>() -> (Handle, Sender<T>, Receiver<T>) {
        cell(|| TypeNames {
            object: "test",
            message: std::any::type_name::<T>(),
        })
    }

    impl<T> Parking<T> {
        fn is_parked(&self) -> bool {
            self.0.queues().parked.is_some()
        }
    }

    #[tokio::test]
    async fn messages_arrive_in_order_and_the_end_comes_with_the_last_handle() {
        let (handle, tx, mut rx) = test_cell();
        let tx2 = tx.clone();
        tx.send(1).unwrap();
        tx2.send(2).unwrap();
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop((tx, tx2));
        assert_eq!(
            rx.try_recv(),
            Err(TryRecvError::Empty),
            "senders do not keep it"
        );
        let other = handle.clone();
        drop(handle);
        assert_eq!(
            rx.try_recv(),
            Err(TryRecvError::Empty),
            "one handle is left"
        );
        drop(other);
        assert_eq!(rx.recv().await, None);
        assert!(rx.recv_control().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_message_and_for_the_last_handle() {
        let (handle, tx, mut rx) = test_cell::<u32>();
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            let end = rx.recv().await;
            (first, end)
        });
        tokio::task::yield_now().await;
        tx.send(7).unwrap();
        drop(handle);
        assert_eq!(waiting.await.unwrap(), (Some(7), None));
        assert_eq!(tx.send(8), Err(8), "the inbox ended with its object");
    }

    #[tokio::test]
    async fn control_comes_before_the_inbox() {
        let (handle, tx, mut rx) = test_cell::<u32>();
        tx.send(1).unwrap();
        assert!(handle.send_control(Control::Release).is_ok());
        assert!(matches!(
            rx.recv_any().await,
            Input::Control(Some(Control::Release))
        ));
        assert!(matches!(rx.recv_any().await, Input::Message(Some(1))));
        drop(handle);
        assert!(matches!(rx.recv_any().await, Input::Control(None)));
    }

    #[tokio::test]
    async fn a_reference_sends_without_keeping_the_control_queue_open() {
        let (handle, _tx, mut rx) = test_cell::<u32>();
        let reference = handle.reference();
        assert!(reference.send_control(Control::Release).is_ok());
        drop(handle);
        // What it sent arrives; then the receiver sees the end, the reference notwithstanding.
        assert!(matches!(rx.recv_control().await, Some(Control::Release)));
        assert!(rx.recv_control().await.is_none());
        drop(rx);
        assert!(reference.send_control(Control::Release).is_err());
    }

    #[tokio::test]
    async fn a_closed_inbox_refuses_sends_and_keeps_what_it_holds() {
        let (handle, tx, mut rx) = test_cell();
        tx.send("kept").unwrap();
        rx.close();
        assert_eq!(tx.send("refused"), Err("refused"));
        assert!(
            handle.send_control(Control::Release).is_ok(),
            "control still open"
        );
        assert_eq!(rx.recv().await, Some("kept"));
        assert_eq!(rx.recv().await, None);
        drop(rx);
        assert!(tx.send("after").is_err());
        assert!(handle.send_control(Control::Release).is_err());
    }

    #[test]
    fn a_reference_finds_the_inbox_of_its_type_only() {
        let (handle, _tx, mut rx) = test_cell::<u32>();
        assert_eq!(handle.object_type(), "test");
        assert_eq!(handle.message_type(), "u32");
        assert!(handle.inbox::<String>().is_none());
        handle.inbox::<u32>().expect("its type").send(5).unwrap();
        assert_eq!(rx.try_recv(), Ok(5));
    }

    #[test]
    fn a_handle_closing_the_cell_refuses_sends_and_resumes_the_parked_task() {
        static RESUMED: Mutex<Option<Receiver<u8>>> = Mutex::new(None);
        struct Stash(Receiver<u8>);
        impl Parked for Stash {
            fn resume(self: Box<Self>) {
                *RESUMED.lock().unwrap() = Some(self.0);
            }
        }
        let (handle, tx, rx) = test_cell::<u8>();
        let other = tx.clone();
        tx.send(1).unwrap();
        let parking = rx.parking();
        let parked = rx.parking().park(Box::new(Stash(rx)), false);
        assert!(parked.is_none() && parking.is_parked());
        handle.close();
        let mut rx = RESUMED
            .lock()
            .unwrap()
            .take()
            .expect("the close resumes the task");
        assert_eq!(other.send(2), Err(2));
        assert!(handle.send_control(Control::Release).is_err());
        assert_eq!(
            rx.try_recv(),
            Err(TryRecvError::Disconnected),
            "what was queued is dropped"
        );
    }

    #[test]
    fn a_held_task_stays_parked_for_messages_and_resumes_for_control() {
        static RESUMED: Mutex<Option<Receiver<u8>>> = Mutex::new(None);
        struct Stash(Receiver<u8>);
        impl Parked for Stash {
            fn resume(self: Box<Self>) {
                *RESUMED.lock().unwrap() = Some(self.0);
            }
        }
        let (handle, tx, rx) = test_cell::<u8>();
        let parking = rx.parking();
        assert!(rx.parking().park(Box::new(Stash(rx)), false).is_none());
        tx.send(1).unwrap();
        assert!(parking.is_parked(), "a message does not wake a held task");
        assert!(RESUMED.lock().unwrap().is_none());
        assert!(handle.send_control(Control::Release).is_ok());
        let mut rx = RESUMED.lock().unwrap().take().expect("control resumes it");
        assert!(matches!(rx.try_recv_control(), Ok(Control::Release)));
        assert_eq!(rx.try_recv(), Ok(1), "the message waited for it");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_lost_between_many_senders_and_a_racing_receiver() {
        let (handle, tx, mut rx) = test_cell::<u64>();
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
        let mut next = [0u64; 4];
        while next != [10_000; 4] {
            let v = rx.recv().await.expect("the handle keeps the inbox open");
            let (s, i) = ((v / 1_000_000) as usize, v % 1_000_000);
            assert_eq!(i, next[s], "sender {s}'s messages out of order");
            next[s] += 1;
        }
        for s in senders {
            s.await.unwrap();
        }
        drop(handle);
        assert_eq!(rx.recv().await, None);
    }

    /// A stand-in for an object's task: drains its inbox, parks, and is resumed on a thread
    /// of its own (as a task is on a runtime), counting what it received.
    struct Drainer {
        rx: Receiver<u64>,
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
                match self.rx.parking().park(self, true) {
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
        let (handle, tx, rx) = test_cell::<u64>();
        let (got_tx, got) = std::sync::mpsc::channel();
        let parking = rx.parking();
        let drainer = Drainer {
            rx,
            got: Arc::new(got_tx),
        };
        assert!(drainer.rx.parking().park(Box::new(drainer), true).is_none());
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
        // The last handle's drop resumes it once more; it sees the end and stops for good.
        drop(handle);
        assert!(
            got.recv_timeout(std::time::Duration::from_secs(30))
                .is_err()
        );
        assert_eq!(tx.send(0), Err(0));
    }

    #[test]
    fn a_park_with_input_waiting_gives_the_task_back() {
        let (_handle, tx, rx) = test_cell::<u8>();
        tx.send(1).unwrap();
        struct Unreachable(Receiver<u8>);
        impl Parked for Unreachable {
            fn resume(self: Box<Self>) {
                unreachable!("not parked")
            }
        }
        let parking = rx.parking();
        let back = rx.parking().park(Box::new(Unreachable(rx)), true);
        assert!(back.expect("given back").0.ready());
        assert!(!parking.is_parked());
    }

    /// A million idle objects hold a million cells: one that grows past 200 bytes with its
    /// `Arc`'s counts moves up an allocator size class (glibc: 16 bytes more an object).
    #[test]
    fn a_cell_stays_within_its_size_class() {
        let with_counts = std::mem::size_of::<Cell<u64>>() + 2 * std::mem::size_of::<usize>();
        assert!(with_counts <= 200, "a cell takes {with_counts} bytes");
    }

    #[test]
    fn an_empty_queue_holds_no_buffer() {
        let (_handle, tx, mut rx) = test_cell();
        for i in 0..1_000 {
            tx.send(i).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert!(rx.0.queues().inbox.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn a_released_queue_holds_no_room_and_keeps_what_is_queued() {
        let (handle, tx, mut rx) = test_cell();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert!(handle.send_control(Control::Release).is_ok());
        rx.release_room();
        assert_eq!(rx.try_recv(), Ok(1), "a queue with messages keeps them");
        assert_eq!(rx.try_recv(), Ok(2));
        assert!(rx.0.queues().inbox.capacity() > 0);
        assert!(rx.try_recv_control().is_ok());
        rx.release_room();
        assert_eq!(rx.0.queues().inbox.capacity(), 0);
        assert_eq!(rx.0.queues().control.capacity(), 0);
        tx.send(3).unwrap();
        assert_eq!(rx.try_recv(), Ok(3), "the queue still takes messages");
    }
}
