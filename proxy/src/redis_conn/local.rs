//! Connections made on the runtimes that call Redis, and calls time-boxed so that the box
//! measures Redis, not the caller's own runtime.
//!
//! A multiplexed connection's driver is a task on the runtime that made it. Called from another
//! runtime's thread (a pingora worker calling through a connection made on a background
//! thread), every call crosses threads twice: the request handed to the driver, the answer
//! handed back, each a futex wake and a context switch. [`LocalConns`] keeps one connection per
//! calling runtime thread instead, made on that runtime, so a call and its driver share a thread.
//!
//! The price is that the driver now competes with the caller's own work: on a starved worker,
//! the caller's deadline can fire before the driver has had its turn to hand over an answer
//! Redis already sent. [`answer_within`] therefore gives the driver the worker's turns after the
//! deadline before giving up (see there).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::thread::ThreadId;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::{AsyncConn, RedisEndpoint};

/// How many turns of the caller's runtime a call is given after its deadline (see
/// [`answer_within`]).
pub const GRACE_TURNS: usize = 8;

/// Runs `call` for at most `budget`, then for at most [`GRACE_TURNS`] turns of the current
/// runtime; `None` when it has not finished by then.
///
/// Why the turns: when the driver of the call's connection runs on the caller's own runtime, a
/// worker busy with other tasks can reach the deadline with Redis's answer already in the
/// socket and the driver not yet polled to read it. `tokio::task::yield_now` puts the caller
/// back behind every task that is ready and behind a poll of the runtime's I/O driver, so each
/// turn lets the connection's driver read what has arrived and hand it over; the call is polled
/// again after each. The deadline then measures Redis's slowness rather than the worker's
/// backlog. A Redis that is stopped or unreachable still fails the call at once (its error), and
/// a Redis that hangs fails it after `budget` plus a few scheduler turns (microseconds on an
/// idle worker).
pub async fn answer_within<F: Future>(budget: Duration, call: F) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    if let Ok(answer) = tokio::time::timeout(budget, call.as_mut()).await {
        return Some(answer);
    }
    for _ in 0..GRACE_TURNS {
        tokio::task::yield_now().await;
        let polled = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        if let Poll::Ready(answer) = polled {
            return Some(answer);
        }
    }
    None
}

/// One calling thread's connection, and whether the runtime that drives it still runs.
#[derive(Debug, Clone)]
struct Local {
    conn: AsyncConn,
    /// Cleared when the task that made the connection is dropped, which happens when its runtime
    /// shuts down (and with it the connection's driver).
    alive: Arc<AtomicBool>,
}

/// Clears its flag when dropped.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Connections made on the runtimes that call Redis, one per calling thread.
#[derive(Debug, Default)]
pub struct LocalConns {
    /// Read on every call without a lock; written once per thread (and when a runtime goes).
    ready: ArcSwap<HashMap<ThreadId, Local>>,
    /// Threads whose connection is being made (locked only until that thread's is ready).
    connecting: Mutex<HashSet<ThreadId>>,
}

impl LocalConns {
    /// This thread's own connection when it has one whose runtime still runs; otherwise starts
    /// making it (once at a time) on the current runtime and answers `None`: the caller uses a
    /// shared connection meanwhile. `timeout` bounds the connect and each reply, as for
    /// [`RedisEndpoint::connect`].
    pub fn here(
        self: &Arc<Self>,
        endpoint: &RedisEndpoint,
        timeout: Duration,
    ) -> Option<AsyncConn> {
        let id = std::thread::current().id();
        if let Some(local) = self.ready.load().get(&id) {
            if local.alive.load(Ordering::Acquire) {
                return Some(local.conn.clone());
            }
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let first = self
            .connecting
            .lock()
            .map(|mut c| c.insert(id))
            .unwrap_or(false);
        if first {
            let (this, endpoint) = (self.clone(), endpoint.clone());
            runtime.spawn(async move {
                match endpoint.connect(timeout).await {
                    Ok(conn) => {
                        let alive = Arc::new(AtomicBool::new(true));
                        let guard = AliveGuard(alive.clone());
                        this.ready.rcu(|m| {
                            let mut m = HashMap::clone(m);
                            m.insert(
                                id,
                                Local {
                                    conn: conn.clone(),
                                    alive: alive.clone(),
                                },
                            );
                            m
                        });
                        this.done_connecting(id);
                        // Lives as long as the runtime: its drop at the runtime's shutdown marks
                        // the connection dead, and this thread makes a new one on its next
                        // runtime (a thread may run several runtimes one after the other).
                        let _guard = guard;
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "no redis connection on this runtime yet; using the shared one");
                        // Tried again by a later call, not at once.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        this.done_connecting(id);
                    }
                }
            });
        }
        None
    }

    fn done_connecting(&self, id: ThreadId) {
        if let Ok(mut c) = self.connecting.lock() {
            c.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A worker that was busy past the caller's deadline, with the "driver" (here a task whose
    /// timer fired during the stall, just after the caller's) not yet polled: the answer is
    /// there to be handed over.
    async fn stalled_answer<T>(
        wait: impl FnOnce(tokio::sync::oneshot::Receiver<u8>) -> T,
    ) -> T::Output
    where
        T: Future,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let _ = tx.send(7);
        });
        // Blocks the (one) worker past both timers once the caller is waiting.
        tokio::spawn(async {
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(80));
        });
        wait(rx).await
    }

    #[tokio::test]
    async fn a_stalled_worker_gets_the_answer_that_arrived_meanwhile() {
        let answer = stalled_answer(|rx| answer_within(Duration::from_millis(20), rx)).await;
        assert_eq!(answer.map(Result::ok), Some(Some(7)));
    }

    #[tokio::test]
    async fn a_plain_timeout_loses_that_answer() {
        // The case the turns are for: without them, the same stall reads as a timeout.
        let answer = stalled_answer(|rx| tokio::time::timeout(Duration::from_millis(20), rx)).await;
        assert!(answer.is_err(), "{answer:?}");
    }

    #[tokio::test]
    async fn a_call_that_never_answers_gives_up_after_its_budget() {
        let started = Instant::now();
        let answer = answer_within(Duration::from_millis(30), std::future::pending::<()>()).await;
        assert_eq!(answer, None);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(30), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn an_answer_within_the_budget_is_returned_at_once() {
        assert_eq!(
            answer_within(Duration::from_millis(30), async { 5 }).await,
            Some(5)
        );
    }
}
