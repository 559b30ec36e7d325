//! An object's queues (its mailbox and its control queue): unbounded, many senders, one
//! receiver, like tokio's unbounded channel, but allocating nothing until a message arrives
//! and nothing once it is drained. Tokio's channel allocates a block of 32 slots for each
//! channel up front (about 3 KiB for 64-byte messages in their envelopes, two queues per
//! object), which dominated the memory of a cohort of many idle objects.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
pub(crate) use tokio::sync::mpsc::error::TryRecvError;

/// A queue drained to empty keeps at most this much room; more is given back.
const KEEP_CAPACITY: usize = 16;

struct Shared<T> {
    state: Mutex<State<T>>,
    senders: AtomicUsize,
    /// Wakes the receiver: a message arrived, or the last sender left.
    arrived: Notify,
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
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            closed: false,
        }),
        senders: AtomicUsize::new(1),
        arrived: Notify::new(),
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
        {
            let mut state = self.shared.state();
            if state.closed {
                return Err(value);
            }
            state.queue.push_back(value);
        }
        self.shared.arrived.notify_one();
        Ok(())
    }
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
            self.shared.arrived.notify_one();
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
        loop {
            match self.try_recv() {
                Ok(value) => return Some(value),
                Err(TryRecvError::Disconnected) => return None,
                // A send between the check and the wait leaves a permit: no wakeup is lost.
                Err(TryRecvError::Empty) => self.shared.arrived.notified().await,
            }
        }
    }

    /// Refuses further sends; what is queued can still be received.
    pub(crate) fn close(&mut self) {
        self.shared.state().closed = true;
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

    #[test]
    fn an_empty_queue_holds_no_buffer() {
        let (tx, mut rx) = channel();
        for i in 0..1_000 {
            tx.send(i).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert!(rx.shared.state().queue.capacity() <= KEEP_CAPACITY);
    }
}
