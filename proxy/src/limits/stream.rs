//! Keeps a streaming LLM response within its tenant's and run's budgets.
//!
//! A streaming call that sets no `max_tokens` may run past what was reserved for it. The body
//! filters that see the stream are synchronous (they cannot wait for Redis), so as the running
//! output estimate nears the reservation the guard starts an extension in the background, and
//! reads its result on a later chunk. A chunk that would take the output past what is covered
//! is not passed on before an extension covers it: the guard asks for one sized to it and has
//! the proxy wait for the answer before the chunk goes on (pingora sleeps on the duration the
//! upstream body filter returns, before the downstream one runs). If an extension is refused,
//! or the counters cannot be reached in time, the stream is cut there: spend stops at the
//! ceiling rather than running into overage, however fast the upstream sends.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::{AdmitError, Charge, LimitBackend, LimitKey, LimitKind, Window};

const PENDING: u8 = 0;
const GRANTED: u8 = 1;
const REFUSED_RUN: u8 = 2;
const REFUSED_DAY: u8 = 3;
const REFUSED_MONTH: u8 = 4;
const UNAVAILABLE: u8 = 5;

/// Why a stream was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// A budget of this window (`run`, `day`, `month`) has nothing left for it.
    Budget(&'static str),
    /// The counters could not be reached to extend it (fail closed).
    Unavailable,
}

/// What the body filter does with the chunk it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it on.
    Pass,
    /// Wait this long for the extensions in flight, then decide again
    /// ([`StreamGuard::after_wait`]): the chunk goes past what is covered.
    Wait(Duration),
    /// End the stream here with an error event.
    Cut(CutReason),
}

/// The budget state of one streaming response.
#[derive(Debug)]
pub struct StreamGuard {
    backend: Arc<dyn LimitBackend>,
    keys: Arc<[LimitKey]>,
    /// One extension: this many output tokens, and what they cost.
    step_tokens: u64,
    step: Charge,
    /// Output tokens covered by the reservation and the extensions granted so far.
    covered: u64,
    granted: Charge,
    /// Extensions asked for and not yet taken into account.
    pending: Vec<Pending>,
    refused: Option<CutReason>,
    /// Steps an ask ahead asks for: doubled each time a chunk had to wait (an upstream faster
    /// than the steps are answered), so that it waits a few times, not once a step.
    ahead: u64,
    /// An ask ahead was refused: none is made again until the ceilings change
    /// ([`Self::set_keys`]); a chunk past the cover still asks for what it needs.
    ahead_refused: bool,
    /// No step is asked ahead before the estimate reaches this.
    ask_ahead_from: u64,
}

/// The most steps one ask ahead asks for.
const MAX_AHEAD: u64 = 64;

/// An extension asked for and not yet taken into account: how many steps it asks for, whether
/// it asks ahead of need, its outcome (written by the task that asks) and that task, so the
/// stream's end can wait for it.
#[derive(Debug)]
struct Pending {
    steps: u64,
    ahead: bool,
    outcome: Arc<AtomicU8>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StreamGuard {
    /// A guard for a response whose reservation covers `covered_output` output tokens; each
    /// extension reserves `step` (for `step_tokens` more output tokens) on `keys`.
    pub fn new(
        backend: Arc<dyn LimitBackend>,
        keys: Vec<LimitKey>,
        covered_output: u64,
        step_tokens: u64,
        step: Charge,
    ) -> Self {
        Self {
            backend,
            keys: keys.into(),
            step_tokens: step_tokens.max(1),
            step,
            covered: covered_output,
            granted: Charge::default(),
            pending: Vec::new(),
            refused: None,
            ahead: 1,
            ahead_refused: false,
            ask_ahead_from: 0,
        }
    }

    /// Asks no step ahead before the output estimate reaches `estimate` (a capped stream's
    /// guard, whose first cover is a few times its ceiling: an honest stream, which stops at
    /// it, must not hold a step it will never use).
    pub fn asking_ahead_from(mut self, estimate: u64) -> Self {
        self.ask_ahead_from = estimate;
        self
    }

    /// The keys the next extensions are asked on (the same counters, their ceilings as a
    /// reload left them: [`super::plan::ceilings_now`]).
    pub fn keys(&self) -> &[LimitKey] {
        &self.keys
    }

    /// Asks the next extensions on `keys` (the same counters with the ceilings of now): a
    /// raised ceiling may have room for an ask ahead that was refused.
    pub fn set_keys(&mut self, keys: Vec<LimitKey>) {
        if *self.keys != *keys {
            self.ahead_refused = false;
        }
        self.keys = keys.into();
    }

    /// Whether an extension is being asked for (its answer not yet taken into account).
    pub fn is_asking(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Extensions granted so far.
    pub fn granted(&self) -> Charge {
        self.granted
    }

    /// Every extension granted, once those still being asked for (if any) have their answers:
    /// what to add to the admission before settling. SECURITY (accounting): an extension asked
    /// for near the end of a stream is reserved on the counters whether or not a later chunk
    /// came to read its answer; left out of the settlement, its reservation would stand until
    /// its window ends and overcharge the tenant. The ask is time-boxed by the backend, so this
    /// waits at most the limiter's timeout.
    pub async fn finish(&mut self) -> Charge {
        for p in &mut self.pending {
            if let Some(task) = p.task.take() {
                // A task that panicked left its outcome pending: nothing was granted to settle.
                let _ = task.await;
            }
        }
        self.take_outcomes();
        self.granted
    }

    /// Takes the outcomes of the extensions that have one.
    fn take_outcomes(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            match p.outcome.load(Ordering::Acquire) {
                PENDING => {
                    i += 1;
                    continue;
                }
                GRANTED => {
                    let tokens = self.step_tokens.saturating_mul(p.steps);
                    self.covered = self.covered.saturating_add(tokens);
                    self.granted = self.granted.plus(self.step.times(p.steps));
                }
                // An ask ahead that does not fit says nothing of what the stream needs (room
                // may be freed, or a reload raise the ceiling, before it gets there): no more
                // asks ahead, and a chunk past the cover asks for what it needs.
                _ if p.ahead => {
                    self.ahead = 1;
                    self.ahead_refused = true;
                }
                code => {
                    self.refused = Some(match code {
                        REFUSED_RUN => CutReason::Budget("run"),
                        REFUSED_DAY => CutReason::Budget("day"),
                        REFUSED_MONTH => CutReason::Budget("month"),
                        _ => CutReason::Unavailable,
                    });
                }
            }
            self.pending.swap_remove(i);
        }
    }

    /// Why the stream was refused more budget, if it was.
    pub fn refused(&self) -> Option<CutReason> {
        self.refused
    }

    /// Output tokens covered once every extension in flight for a chunk is granted (asks ahead
    /// of need left out: one may be refused where an ask sized to the need fits, and a chunk
    /// waiting on it would then be cut with room left).
    fn covered_if_granted(&self) -> u64 {
        let asked: u64 = self
            .pending
            .iter()
            .filter(|p| !p.ahead)
            .map(|p| p.steps)
            .sum();
        self.covered
            .saturating_add(self.step_tokens.saturating_mul(asked))
    }

    /// Decides on the chunk that brought the output estimate to `output_estimate`, before it
    /// goes on. Synchronous: it reads the results of extensions already asked for, and asks for
    /// more where needed.
    pub fn observe(&mut self, output_estimate: u64) -> Verdict {
        self.take_outcomes();
        if output_estimate > self.covered {
            if let Some(reason) = self.refused {
                return Verdict::Cut(reason);
            }
            // SECURITY (budgets): past the cover, the chunk waits for an extension that covers
            // it; passed on while one was still asked for, a fast upstream (a buffering gateway
            // that sends the whole answer at once) ran any budget over by as much as it sent.
            let short = output_estimate.saturating_sub(self.covered_if_granted());
            if short > 0 {
                // Enough for the chunk and half a step beyond, in one ask.
                let steps = short
                    .saturating_add(self.step_tokens / 2)
                    .div_ceil(self.step_tokens);
                self.start_extension(steps.max(1), false);
                self.take_outcomes();
            }
            return match (output_estimate > self.covered, self.refused) {
                (false, _) => Verdict::Pass,
                (true, Some(reason)) => Verdict::Cut(reason),
                (true, None) => {
                    self.ahead = self.ahead.saturating_mul(2).min(MAX_AHEAD);
                    Verdict::Wait(self.backend.answer_within())
                }
            };
        }
        // Ask ahead, half a step before the cover runs out, so a granted extension is usually
        // in place before it is needed; while one is in flight the stream is not held up.
        if self.refused.is_none()
            && !self.ahead_refused
            && self.pending.is_empty()
            && output_estimate >= self.ask_ahead_from
            && output_estimate.saturating_add(self.step_tokens / 2) >= self.covered
        {
            self.start_extension(self.ahead, true);
            self.take_outcomes();
        }
        Verdict::Pass
    }

    /// Decides again on a chunk [`Self::observe`] had wait: it passes only if it is covered
    /// now. An extension still unanswered after the wait (the backend's time box) cuts as an
    /// unreachable backend does.
    pub fn after_wait(&mut self, output_estimate: u64) -> Verdict {
        self.take_outcomes();
        if output_estimate <= self.covered {
            return Verdict::Pass;
        }
        Verdict::Cut(self.refused.unwrap_or(CutReason::Unavailable))
    }

    /// Asks for `steps` extensions in one call (`ahead` of need, or for the chunk in hand). A
    /// backend that answers at once (the in-memory one) answers here; any other is asked on a
    /// task of its own.
    fn start_extension(&mut self, steps: u64, ahead: bool) {
        // SECURITY: a stream is held to the windows it was admitted in, whose counters are kept
        // past their end only so long ([`Window::expires_at`]): asked later (a stream running
        // an hour past midnight, or the clock stepped forward), an extension would find its
        // day's counter gone and count from zero, the ceiling off for the rest of the stream.
        // It is refused as that window's ceiling instead.
        if let Some(over) = self.ended_window(crate::clock::unix_now_i64()) {
            self.pending.push(Pending {
                steps,
                ahead,
                outcome: Arc::new(AtomicU8::new(over)),
                task: None,
            });
            return;
        }
        let state = Arc::new(AtomicU8::new(PENDING));
        let backend = self.backend.clone();
        let keys = self.keys.clone();
        let charge = self.step.times(steps);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to ask on: no extension, so the stream ends at its reservation.
            state.store(UNAVAILABLE, Ordering::Release);
            self.pending.push(Pending {
                steps,
                ahead,
                outcome: state,
                task: None,
            });
            return;
        };
        let outcome = state.clone();
        let mut ask = Box::pin(async move {
            let result = match backend.admit(&keys, charge).await {
                Ok(_) => GRANTED,
                Err(AdmitError::Limited(deny)) => match deny.key.kind {
                    LimitKind::Quota { window, .. } => refused_for(window),
                    _ => REFUSED_RUN,
                },
                Err(AdmitError::Unavailable) => UNAVAILABLE,
            };
            state.store(result, Ordering::Release);
        });
        // Polled once here: a later poll (by the task) registers its own waker.
        let task = match ask.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(()) => None,
            Poll::Pending => Some(runtime.spawn(ask)),
        };
        self.pending.push(Pending {
            steps,
            ahead,
            outcome,
            task,
        });
    }

    /// The refusal of the first day or month window of the keys whose counter may be gone at
    /// unix second `now`.
    fn ended_window(&self, now: i64) -> Option<u8> {
        self.keys.iter().find_map(|key| match key.kind {
            LimitKind::Quota { window, .. } if window.expires_at().is_some_and(|e| e <= now) => {
                Some(refused_for(window))
            }
            _ => None,
        })
    }
}

/// The outcome of an extension a quota of `window` refused.
fn refused_for(window: Window) -> u8 {
    match window {
        Window::Run => REFUSED_RUN,
        Window::Day(_) => REFUSED_DAY,
        Window::Month(_) => REFUSED_MONTH,
    }
}

/// The SSE event that ends a cut stream. Both the OpenAI and the Anthropic SDKs raise an error
/// on an `error` event whose data carries an `error` object.
pub fn cut_event(code: &str, message: &str, request_id: &str) -> Vec<u8> {
    let data = serde_json::json!({
        "type": "error",
        "error": {
            "type": code,
            "code": code,
            "message": message,
            "request_id": request_id,
        }
    });
    format!("event: error\ndata: {data}\n\n").into_bytes()
}

/// What a streaming LLM response may extend its reservation by, one step at a time.
#[derive(Debug, Clone, Copy)]
pub struct StreamPlan {
    /// Output tokens the guard lets pass before asking for more: what the admission reserved
    /// (a capped stream's, a few times its ceiling: see `plan::plan`).
    pub covered_output: u64,
    /// No step is asked ahead before the output estimate reaches this (a capped stream's
    /// guard: an honest one never asks).
    pub ask_ahead_from: u64,
    /// Output tokens per extension.
    pub step_tokens: u64,
    /// What one extension reserves.
    pub step: super::Charge,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TenantId;
    use crate::limits::memory::MemoryBackend;
    use crate::limits::{LimitKind, Measure, Scope, Window};
    use std::time::Duration;

    fn run_tokens(ceiling: u64) -> LimitKey {
        LimitKey {
            scope: Scope::Run(TenantId::new("acme").expect("id"), "r".into()),
            kind: LimitKind::Quota {
                measure: Measure::Tokens,
                window: Window::Run,
                ceiling,
            },
        }
    }

    /// Observes `estimate`, lets any extension that starts finish, and observes it again.
    async fn settle(guard: &mut StreamGuard, estimate: u64) -> Verdict {
        let first = guard.observe(estimate);
        for _ in 0..1000 {
            if guard.pending.is_empty() {
                return guard.observe(estimate);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            if guard.observe(estimate) != Verdict::Pass {
                break;
            }
        }
        assert!(guard.pending.is_empty(), "the extension never finished");
        first
    }

    /// Counters that take `delay` to answer (a Redis round trip), in memory.
    #[derive(Debug)]
    struct Slow {
        inner: MemoryBackend,
        delay: Duration,
    }

    #[async_trait::async_trait]
    impl LimitBackend for Slow {
        async fn admit(
            &self,
            keys: &[LimitKey],
            charge: Charge,
        ) -> Result<super::super::Admission, AdmitError> {
            tokio::time::sleep(self.delay).await;
            self.inner.admit(keys, charge).await
        }
        async fn finish(&self, admission: super::super::Admission, used: Charge) {
            self.inner.finish(admission, used).await;
        }
        async fn read(
            &self,
            keys: &[LimitKey],
        ) -> Result<Vec<u64>, super::super::LimiterUnavailable> {
            self.inner.read(keys).await
        }
        fn answer_within(&self) -> Duration {
            self.delay * 4
        }
    }

    fn tokens(n: u64) -> Charge {
        Charge {
            tokens: n,
            ..Charge::default()
        }
    }

    /// A chunk that takes the output far past its cover at once (a buffering gateway sends a
    /// whole answer in one read) passes only once an extension covers all of it: asked for in
    /// one call, sized to it, answered before the chunk goes on; one the budget has no room for
    /// cuts it, however large.
    #[tokio::test]
    async fn a_chunk_past_the_cover_waits_for_an_extension_that_covers_it() {
        // Answered at once: decided in `observe`.
        let backend = Arc::new(MemoryBackend::default());
        let mut guard = StreamGuard::new(
            backend.clone(),
            vec![run_tokens(10_000)],
            100,
            100,
            tokens(100),
        );
        assert_eq!(guard.observe(5_000), Verdict::Pass);
        assert_eq!(
            guard.granted(),
            tokens(5_000),
            "49 steps and half a step beyond"
        );
        let mut guard = StreamGuard::new(backend, vec![run_tokens(1_000)], 100, 100, tokens(100));
        assert_eq!(guard.observe(5_000), Verdict::Cut(CutReason::Budget("run")));
        assert_eq!(guard.granted(), Charge::default());

        // Answered later: the chunk waits, then passes once covered, or is cut.
        let slow = |ceiling| {
            let backend = Arc::new(Slow {
                inner: MemoryBackend::default(),
                delay: Duration::from_millis(20),
            });
            StreamGuard::new(backend, vec![run_tokens(ceiling)], 100, 100, tokens(100))
        };
        let mut guard = slow(10_000);
        let Verdict::Wait(wait) = guard.observe(5_000) else {
            panic!("the chunk must wait for its extension")
        };
        assert_eq!(wait, Duration::from_millis(80));
        assert_eq!(
            guard.after_wait(5_000),
            Verdict::Cut(CutReason::Unavailable),
            "not answered yet: never passed unchecked"
        );
        let mut guard = slow(10_000);
        let Verdict::Wait(wait) = guard.observe(5_000) else {
            panic!("the chunk must wait for its extension")
        };
        tokio::time::sleep(wait).await;
        assert_eq!(guard.after_wait(5_000), Verdict::Pass);
        assert_eq!(guard.finish().await, tokens(5_000));
        let mut guard = slow(1_000);
        let Verdict::Wait(wait) = guard.observe(5_000) else {
            panic!("the chunk must wait for its extension")
        };
        tokio::time::sleep(wait).await;
        assert_eq!(
            guard.after_wait(5_000),
            Verdict::Cut(CutReason::Budget("run"))
        );
        // An ask-ahead in flight that covers too little: another is asked for the rest.
        let mut guard = slow(10_000);
        assert_eq!(
            guard.observe(60),
            Verdict::Pass,
            "ask ahead, not waited for"
        );
        assert_eq!(guard.pending.len(), 1);
        let Verdict::Wait(wait) = guard.observe(1_000) else {
            panic!("the chunk must wait for its extension")
        };
        assert_eq!(guard.pending.len(), 2, "the rest asked for beside it");
        tokio::time::sleep(wait).await;
        assert_eq!(guard.after_wait(1_000), Verdict::Pass);
        // An ask ahead in flight does not stand for the need: a chunk past the cover asks for
        // what it needs beside it, so a refused ask ahead never cuts a stream with room left.
        let mut ahead_only = slow(10_000);
        ahead_only.ahead = 8;
        assert_eq!(ahead_only.observe(60), Verdict::Pass);
        let Verdict::Wait(_) = ahead_only.observe(150) else {
            panic!("the chunk must wait for its extension")
        };
        assert_eq!(
            ahead_only.pending.iter().filter(|p| !p.ahead).count(),
            1,
            "an ask sized to the chunk"
        );
        // Having waited, it asks further ahead: two steps, then four.
        assert_eq!(guard.ahead, 2);
        let covered = guard.covered;
        assert_eq!(guard.observe(covered - 10), Verdict::Pass);
        assert_eq!(guard.pending.last().map(|p| p.steps), Some(2));
        // An ask ahead that does not fit does not stop the stream: the next ask is sized to
        // the need, and only its refusal cuts.
        let mut guard = StreamGuard::new(
            Arc::new(MemoryBackend::default()),
            vec![run_tokens(400)],
            100,
            100,
            tokens(100),
        );
        guard.ahead = 8;
        assert_eq!(guard.observe(60), Verdict::Pass);
        assert_eq!((guard.refused(), guard.ahead), (None, 1), "800 did not fit");
        assert_eq!(guard.observe(150), Verdict::Pass, "100 more did");
        assert_eq!(
            guard.observe(450),
            Verdict::Pass,
            "and 200 more: 400 in all"
        );
        assert_eq!(guard.observe(501), Verdict::Cut(CutReason::Budget("run")));
    }

    #[tokio::test]
    async fn extends_while_budget_lasts_then_cuts_past_the_cover() {
        let backend = Arc::new(MemoryBackend::default());
        let key = run_tokens(300);
        // The call reserved 100 tokens; the run allows 300, so two extensions of 100 fit.
        let admission = backend
            .admit_now(std::slice::from_ref(&key), tokens(100))
            .expect("admit");
        let mut guard = StreamGuard::new(backend.clone(), vec![key], 100, 100, tokens(100));
        assert_eq!(guard.observe(10), Verdict::Pass);
        assert_eq!(
            guard.granted(),
            Charge::default(),
            "far from the cover: no extension yet"
        );
        assert_eq!(settle(&mut guard, 60).await, Verdict::Pass);
        assert_eq!(guard.granted(), tokens(100), "first extension granted");
        assert_eq!(settle(&mut guard, 160).await, Verdict::Pass);
        assert_eq!(guard.granted(), tokens(200), "second extension granted");
        assert_eq!(settle(&mut guard, 260).await, Verdict::Pass, "within 300");
        assert_eq!(
            (guard.refused(), guard.ahead_refused),
            (None, true),
            "a third extension asked ahead does not fit"
        );
        assert_eq!(guard.observe(300), Verdict::Pass, "exactly at the cover");
        assert_eq!(guard.observe(301), Verdict::Cut(CutReason::Budget("run")));
        drop(admission);
    }

    #[tokio::test]
    async fn the_end_of_a_stream_waits_for_the_extension_it_asked_for() {
        let backend = Arc::new(Slow {
            inner: MemoryBackend::default(),
            delay: Duration::from_millis(20),
        });
        // The last chunk brings the estimate near the cover: an extension is asked for, and no
        // chunk follows to read its answer.
        let mut guard = StreamGuard::new(
            backend.clone(),
            vec![run_tokens(1_000)],
            100,
            100,
            tokens(100),
        );
        assert_eq!(guard.observe(60), Verdict::Pass);
        assert_eq!(guard.pending.len(), 1, "an extension is being asked for");
        assert_eq!(
            guard.finish().await,
            tokens(100),
            "granted, so it is settled"
        );
        // One the budget has no room for is not.
        let mut guard = StreamGuard::new(backend, vec![run_tokens(1)], 100, 100, tokens(100));
        assert_eq!(guard.observe(60), Verdict::Pass);
        assert_eq!(guard.finish().await, Charge::default());
        assert!(guard.ahead_refused);
    }

    #[tokio::test]
    async fn a_refused_extension_cuts_at_the_reservation() {
        let backend = Arc::new(MemoryBackend::default());
        // The run has 1 token left beyond nothing reserved: no extension of 50 fits.
        let key = run_tokens(1);
        let mut guard = StreamGuard::new(
            backend,
            vec![key],
            50,
            50,
            Charge {
                tokens: 50,
                ..Charge::default()
            },
        );
        assert_eq!(settle(&mut guard, 40).await, Verdict::Pass);
        // The ask ahead was refused: no more asks ahead, but nothing is cut by it.
        assert_eq!((guard.refused(), guard.ahead_refused), (None, true));
        assert_eq!(guard.observe(45), Verdict::Pass);
        assert!(guard.pending.is_empty(), "no second ask ahead");
        assert_eq!(
            guard.observe(50),
            Verdict::Pass,
            "the reservation still covers 50"
        );
        // Past the cover, the chunk asks for what it needs; refused, it is cut.
        assert_eq!(guard.observe(51), Verdict::Cut(CutReason::Budget("run")));
        assert_eq!(guard.granted(), Charge::default());
    }

    /// A ceiling raised after an ask ahead was refused (a reload, see `plan::ceilings_now`): the
    /// stream goes on under it, the refusal having cut nothing.
    #[tokio::test]
    async fn a_raised_ceiling_lets_a_stream_go_on_after_a_refused_ask_ahead() {
        let backend = Arc::new(MemoryBackend::default());
        let mut guard = StreamGuard::new(backend, vec![run_tokens(1)], 50, 50, tokens(50));
        assert_eq!(settle(&mut guard, 40).await, Verdict::Pass);
        assert!(guard.ahead_refused);
        guard.set_keys(vec![run_tokens(1_000)]);
        assert!(
            !guard.ahead_refused,
            "asks ahead again under the new ceiling"
        );
        assert_eq!(settle(&mut guard, 51).await, Verdict::Pass);
        assert_eq!(guard.refused(), None);
        // The same ceilings again change nothing.
        guard.ahead_refused = true;
        guard.set_keys(vec![run_tokens(1_000)]);
        assert!(guard.ahead_refused);
    }

    #[tokio::test]
    async fn unreachable_counters_cut_at_the_reservation() {
        use crate::limits::redis::{RedisBackend, RedisSettings, Unavailable};
        // Nothing listens on the port: every extension fails, and fails closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let backend = RedisBackend::start(RedisSettings {
            endpoint: crate::redis_conn::RedisEndpoint::from_url(&format!(
                "redis://127.0.0.1:{port}"
            ))
            .expect("valid url"),
            timeout: Duration::from_millis(50),
            lease_ttl: Duration::from_secs(30),
            run_ttl: Duration::from_secs(60),
            on_unavailable: Unavailable::FailClosed,
        })
        .expect("valid url");
        let step = Charge {
            tokens: 50,
            ..Charge::default()
        };
        let mut guard = StreamGuard::new(Arc::new(backend), vec![run_tokens(1_000)], 50, 50, step);
        assert_eq!(settle(&mut guard, 40).await, Verdict::Pass);
        assert!(guard.ahead_refused, "the ask ahead got no answer");
        // Past the cover the chunk asks for what it needs: no answer (at once, or after its
        // wait) cuts it.
        let verdict = match guard.observe(51) {
            Verdict::Wait(wait) => {
                tokio::time::sleep(wait).await;
                guard.after_wait(51)
            }
            other => other,
        };
        assert_eq!(verdict, Verdict::Cut(CutReason::Unavailable));
    }

    #[test]
    fn cut_event_is_one_sse_error_event() {
        let event = String::from_utf8(cut_event("budget_exhausted", "run budget spent", "req-1"))
            .expect("utf8");
        assert!(
            event.starts_with("event: error\ndata: {") && event.ends_with("}\n\n"),
            "{event}"
        );
        let data: serde_json::Value =
            serde_json::from_str(event.trim_end().trim_start_matches("event: error\ndata: "))
                .expect("json");
        assert_eq!(data["error"]["code"], "budget_exhausted");
        assert_eq!(data["error"]["request_id"], "req-1");
    }
}
