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
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::{AsyncConn, RedisEndpoint};

/// How many turns of the caller's runtime a call is given after its deadline (see
/// [`answer_within`]).
pub const GRACE_TURNS: usize = 8;

/// A turn of the runtime (or a timer's wake-up after its deadline) at least this long means the
/// runtime had a backlog of its own (see [`answer_within`]); an idle runtime's timers wake within
/// their millisecond tick.
pub const BACKLOG: Duration = Duration::from_millis(2);

/// Runs `call` for at most `budget`, then, when the caller's own runtime was what held it up,
/// for at most one more `budget`; `None` when it has not finished by then.
///
/// Why: when the driver of the call's connection runs on the caller's own runtime, a worker
/// busy with other tasks (a burst of new connections, the other threads of a loaded machine)
/// can reach the deadline with Redis's answer already in the socket, or with the request not
/// yet written, because the driver has not been polled. The deadline must measure Redis, not
/// that backlog. So at the deadline the call is given [`GRACE_TURNS`] turns of the runtime:
/// `tokio::task::yield_now` puts the caller behind every task that is ready and behind a poll
/// of the I/O driver, so the connection's driver reads what has arrived and hands it over (the
/// call is polled again after each turn). If the runtime was behind (the caller woke at least
/// [`BACKLOG`] after its deadline, or a turn took that long), the call then waits once more,
/// up to `budget` counted from the moment the runtime caught up. An idle runtime's turns take microseconds, so a Redis that
/// hangs fails the call after `budget` and a few turns; on a starved one, after at most about
/// twice `budget`. A Redis that is stopped or unreachable fails the call at once (its error).
pub async fn answer_within<F: Future>(budget: Duration, call: F) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    let deadline = Instant::now() + budget;
    if let Ok(answer) = tokio::time::timeout(budget, call.as_mut()).await {
        return Some(answer);
    }
    // Woken late: the runtime was behind at the deadline.
    let mut behind = deadline.elapsed() >= BACKLOG;
    for _ in 0..GRACE_TURNS {
        let turn = Instant::now();
        tokio::task::yield_now().await;
        behind |= turn.elapsed() >= BACKLOG;
        let polled = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        if let Poll::Ready(answer) = polled {
            return Some(answer);
        }
    }
    if behind {
        return tokio::time::timeout(budget, call).await.ok();
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
    /// Ends the task that made the connection (see [`LocalConns::forget_all`]).
    retired: Arc<tokio::sync::Notify>,
    /// Calls in a row that got no reply on it (see [`LocalConns::note_reply`]).
    silent: Arc<std::sync::atomic::AtomicU32>,
}

/// What [`LocalConns::note_reply`] counts a thread's own connection's calls without a reply on
/// (handed out with the connection by [`LocalConns::here`]).
#[derive(Debug, Clone)]
pub struct Silence {
    silent: Arc<std::sync::atomic::AtomicU32>,
    retired: Arc<tokio::sync::Notify>,
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
    ) -> Option<(AsyncConn, Silence)> {
        let id = std::thread::current().id();
        if let Some(local) = self.ready.load().get(&id) {
            if local.alive.load(Ordering::Acquire) {
                let silence = Silence {
                    silent: local.silent.clone(),
                    retired: local.retired.clone(),
                };
                return Some((local.conn.clone(), silence));
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
                        let retired = Arc::new(tokio::sync::Notify::new());
                        this.ready.rcu(|m| {
                            let mut m = HashMap::clone(m);
                            m.insert(
                                id,
                                Local {
                                    conn: conn.clone(),
                                    alive: alive.clone(),
                                    retired: retired.clone(),
                                    silent: Arc::default(),
                                },
                            );
                            m
                        });
                        this.done_connecting(id);
                        drop(conn);
                        // Lives as long as the runtime, or until the connection is let go:
                        // its drop at the runtime's shutdown marks the connection dead, and this
                        // thread makes a new one on its next runtime (a thread may run several
                        // runtimes one after the other).
                        let _guard = guard;
                        retired.notified().await;
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

    /// Lets every thread's connection go: each thread makes a new one on its next call (the
    /// shared connection serves it meanwhile). For connections that no longer answer (see the
    /// limiter's probe).
    pub fn forget_all(&self) {
        let old = self.ready.swap(Arc::default());
        for local in old.values() {
            local.retired.notify_one();
        }
    }

    /// Notes whether a call on this thread's connection (its `own` silence, from
    /// [`Self::here`]) got a reply; after `limit` calls in a row without one the connection is let go, and the
    /// thread's next call makes a new one (true then). A connection whose replies fell out of
    /// step with its calls never answers again, and the connection manager remakes only a
    /// closed one.
    pub fn note_reply(&self, own: &Silence, replied: bool, limit: u32) -> bool {
        if replied {
            own.silent.store(0, Ordering::Relaxed);
            return false;
        }
        if own.silent.fetch_add(1, Ordering::Relaxed) + 1 < limit {
            return false;
        }
        let id = std::thread::current().id();
        self.ready.rcu(|m| {
            let mut m = HashMap::clone(m);
            // Only this connection: the thread may have made another meanwhile.
            if m.get(&id)
                .is_some_and(|l| Arc::ptr_eq(&l.silent, &own.silent))
            {
                m.remove(&id);
            }
            m
        });
        own.retired.notify_one();
        true
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
        stall_the_worker();
        wait(rx).await
    }

    /// Blocks the (one) worker for 80 ms once the caller is waiting.
    fn stall_the_worker() {
        tokio::spawn(async {
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(80));
        });
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
    async fn a_stalled_worker_gives_the_call_one_more_budget() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            // Answers 20 ms after the stall ends: past the deadline and the turns, and 30 ms
            // inside the budget the stall earns (a loaded machine wakes this timer late).
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx.send(7);
        });
        stall_the_worker();
        let answer = answer_within(Duration::from_millis(50), rx).await;
        assert_eq!(answer.map(Result::ok), Some(Some(7)));
    }

    #[tokio::test]
    async fn an_answer_long_after_the_budget_is_not_waited_for() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = tx.send(7);
        });
        let answer = answer_within(Duration::from_millis(30), rx).await;
        assert!(answer.is_none(), "{answer:?}");
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
