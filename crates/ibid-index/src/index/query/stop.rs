//! When a query must give up before its answer: a deadline, a flag another thread raises (a server
//! shutting down), or both. The long loops of the queries ask [`Stop::check`] every few thousand
//! steps, so a query that is abandoned stops using the processor within milliseconds instead of
//! running to its end behind a 503 (four timed-out CNF queries kept burning 20 CPU-seconds).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};

/// Steps between two looks at the clock: `Instant::now` costs ~25 ns, a step a few ns to a cache
/// miss, so checking every 4096 steps keeps the cost below 1 % and the reaction within ~1 ms.
pub(crate) const CHECK_EVERY: usize = 4096;

#[derive(Debug, Clone, Default)]
pub struct Stop {
    deadline: Option<Instant>,
    flag: Option<Arc<AtomicBool>>,
}

impl Stop {
    /// Run to the end.
    pub fn never() -> Stop {
        Stop::default()
    }

    /// Give up once `deadline` has passed.
    pub fn at(deadline: Instant) -> Stop {
        Stop { deadline: Some(deadline), flag: None }
    }

    /// Also give up once `flag` is raised.
    pub fn or_when(mut self, flag: Arc<AtomicBool>) -> Stop {
        self.flag = Some(flag);
        self
    }

    /// `Err(Error::Stopped)` when the query must end now.
    pub fn check(&self) -> Result<()> {
        if self.flag.as_ref().is_some_and(|f| f.load(Ordering::Relaxed)) {
            return Err(Error::Stopped("the server is shutting down".into()));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::Stopped("the query ran past its deadline".into()));
        }
        Ok(())
    }

    /// `check` on every [`CHECK_EVERY`]-th step `i`.
    #[inline]
    pub(crate) fn check_at(&self, i: usize) -> Result<()> {
        if i.is_multiple_of(CHECK_EVERY) {
            self.check()
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stops_at_the_deadline_or_the_flag() {
        assert!(Stop::never().check().is_ok());
        assert!(Stop::at(Instant::now() + Duration::from_secs(60)).check().is_ok());
        assert!(matches!(Stop::at(Instant::now()).check(), Err(Error::Stopped(_))));
        let flag = Arc::new(AtomicBool::new(false));
        let stop = Stop::at(Instant::now() + Duration::from_secs(60)).or_when(flag.clone());
        assert!(stop.check().is_ok());
        flag.store(true, Ordering::Relaxed);
        assert!(matches!(stop.check(), Err(Error::Stopped(m)) if m.contains("shutting down")));
        assert!(stop.check_at(1).is_ok(), "only every CHECK_EVERY-th step looks");
    }
}
