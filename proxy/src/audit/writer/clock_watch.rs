//! Noticing a step of the wall clock (NTP, a VM resumed), so that the writer signs the chains on
//! either side of it (see [`super::Writer`]'s run loop).

use std::time::{Duration, Instant, SystemTime};

/// How long after a step of the wall clock every batch is signed as soon as it is written.
pub(super) const STEP_SETTLES: Duration = Duration::from_secs(1);

/// Tells when the wall clock stepped: the time it moved since the last look is not the time
/// the monotonic clock moved, by more than [`ClockWatch::STEP`].
pub(super) struct ClockWatch {
    wall: SystemTime,
    mono: Instant,
}

impl ClockWatch {
    /// A difference below this is drift, or the time between the two reads.
    const STEP: Duration = Duration::from_secs(5);

    pub(super) fn new() -> Self {
        Self {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    /// How far the wall clock stepped (`+1h`, `-10m`) since the last call, if it did.
    pub(super) fn stepped(&mut self) -> Option<String> {
        self.step_to(SystemTime::now(), Instant::now())
    }

    /// [`Self::stepped`], the clocks reading `wall` and `mono` now.
    fn step_to(&mut self, wall: SystemTime, mono: Instant) -> Option<String> {
        let nanos = |d: Duration| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX);
        let moved = match wall.duration_since(self.wall) {
            Ok(ahead) => nanos(ahead),
            Err(back) => -nanos(back.duration()),
        };
        let step = moved - nanos(mono.duration_since(self.mono));
        (self.wall, self.mono) = (wall, mono);
        let size = Duration::from_secs(u64::try_from(step.unsigned_abs() / 1_000_000_000).ok()?);
        (size > Self::STEP).then(|| {
            let sign = if step > 0 { '+' } else { '-' };
            format!("{sign}{}", humantime::format_duration(size))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_of_the_wall_clock_is_told_from_time_passing() {
        let mut watch = ClockWatch::new();
        let (wall, mono) = (watch.wall, watch.mono);
        let at = |secs: u64| mono + Duration::from_secs(secs);
        // A minute passed on both clocks: no step.
        assert_eq!(watch.step_to(wall + Duration::from_secs(60), at(60)), None);
        // An hour forward in one second.
        assert_eq!(
            watch
                .step_to(wall + Duration::from_secs(3_661), at(61))
                .as_deref(),
            Some("+1h")
        );
        // Back by an hour, and back by less than a second passed.
        assert_eq!(
            watch
                .step_to(wall + Duration::from_secs(62), at(62))
                .as_deref(),
            Some("-1h")
        );
        assert_eq!(
            watch
                .step_to(wall + Duration::from_secs(52), at(92))
                .as_deref(),
            Some("-40s")
        );
        // A few seconds either way is drift.
        assert_eq!(watch.step_to(wall + Duration::from_secs(84), at(120)), None);
    }
}
