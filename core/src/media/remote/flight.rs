//! Single flight: concurrent requests for one remote item share one fetch, a task of
//! its own (so a client that gives up does not cancel it for the others), and at most
//! [`MAX_IN_FLIGHT`](super::MAX_IN_FLIGHT) distinct items are in flight.

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;

use crate::error::Error;

/// A fetch's outcome, shareable between the requests waiting for it.
#[derive(Clone, Debug)]
pub(super) enum FetchError {
    NotFound(String),
    TooLarge(String),
    NotYetUploaded(String),
    Timeout(String),
    Remote(String),
    Internal(String),
}

impl From<Error> for FetchError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound(m) => FetchError::NotFound(m),
            Error::TooLarge(m) => FetchError::TooLarge(m),
            Error::NotYetUploaded(m) => FetchError::NotYetUploaded(m),
            Error::Timeout(m) => FetchError::Timeout(m),
            Error::RemoteServer(m) => FetchError::Remote(m),
            other => FetchError::Internal(other.to_string()),
        }
    }
}

impl From<FetchError> for Error {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::NotFound(m) => Error::NotFound(m),
            FetchError::TooLarge(m) => Error::TooLarge(m),
            FetchError::NotYetUploaded(m) => Error::NotYetUploaded(m),
            FetchError::Timeout(m) => Error::Timeout(m),
            FetchError::Remote(m) => Error::RemoteServer(m),
            FetchError::Internal(m) => Error::Internal(m),
        }
    }
}

pub(super) type Flight = Shared<BoxFuture<'static, Result<(), FetchError>>>;

/// Concurrent work keyed by `K`, run once per key at a time, with a cap on keys.
/// A flight in the map: the limit it runs with, its shared outcome, its task.
type Entry = (u64, Flight, tokio::task::AbortHandle);

pub(crate) struct SingleFlight<K> {
    flights: Arc<Mutex<HashMap<K, Entry>>>,
    max: usize,
}

impl<K: std::hash::Hash + Eq + Clone + Send + 'static> SingleFlight<K> {
    pub(crate) fn new(max: usize) -> Self {
        SingleFlight {
            flights: Arc::default(),
            max,
        }
    }

    /// Join the flight for `key`, or start `work` (tagged with `limit`) as a task of its
    /// own. Returns the flight and the limit it runs with.
    pub(super) fn join<F>(&self, key: K, limit: u64, work: F) -> Result<(u64, Flight), Error>
    where
        F: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let mut map = self.flights.lock();
        if let Some((l, f, _)) = map.get(&key) {
            return Ok((*l, f.clone()));
        }
        if map.len() >= self.max {
            return Err(Error::LimitExceeded(
                "too many remote media downloads at once; try again shortly".into(),
            ));
        }
        let flights = self.flights.clone();
        let k = key.clone();
        let task = tokio::spawn(async move {
            let out = work.await.map_err(FetchError::from);
            flights.lock().remove(&k);
            out
        });
        let abort = task.abort_handle();
        let flight = async move {
            task.await
                .unwrap_or_else(|e| Err(FetchError::Internal(format!("media fetch task: {e}"))))
        }
        .boxed()
        .shared();
        map.insert(key, (limit, flight.clone(), abort));
        Ok((limit, flight))
    }

    /// Abort every flight (node shutdown); their waiters get an error.
    pub(super) fn abort_all(&self) {
        for (_, (_, _, abort)) in self.flights.lock().drain() {
            abort.abort();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.flights.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[tokio::test]
    async fn single_flight_runs_once_and_is_bounded() {
        let flights = SingleFlight::<u32>::new(2);
        let runs = Arc::new(AtomicU64::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let work = |runs: Arc<AtomicU64>, mut gate: tokio::sync::watch::Receiver<bool>| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let _ = gate.wait_for(|open| *open).await;
            Ok(())
        };
        let (_, a) = flights
            .join(1, 10, work(runs.clone(), gate.clone()))
            .expect("first");
        let (limit, b) = flights
            .join(1, 99, work(runs.clone(), gate.clone()))
            .expect("joined");
        assert_eq!(limit, 10, "the second caller joins the first flight");
        let (_, c) = flights
            .join(2, 10, work(runs.clone(), gate.clone()))
            .expect("second key");
        let over = flights.join(3, 10, work(runs.clone(), gate.clone()));
        assert!(
            matches!(over, Err(Error::LimitExceeded(_))),
            "cap of two keys"
        );
        release.send(true).expect("release");
        assert!(a.await.is_ok() && b.await.is_ok() && c.await.is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 2, "one run per key");
        // Finished flights leave the map, so a later request fetches afresh.
        for _ in 0..100 {
            if flights.len() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(flights.len(), 0);
        // Shutdown aborts what is in flight; its waiters get an error, not a hang.
        let (_held_shut, shut) = tokio::sync::watch::channel(false);
        let (_, stuck) = flights
            .join(4, 10, work(runs.clone(), shut))
            .expect("flight");
        flights.abort_all();
        assert!(matches!(stuck.await, Err(FetchError::Internal(_))));
        assert_eq!(flights.len(), 0);
    }
}
