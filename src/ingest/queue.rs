//! A bounded queue in front of CPU-bound work (encoder forward passes). Work runs on blocking
//! threads, never on the async workers; when the queue is full the caller is told at once
//! (the API answers 503 with `Retry-After`) instead of building an unbounded backlog.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// The queue was full.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the encoder queue is full; retry shortly")]
pub struct QueueFull;

/// Admits at most `capacity` jobs at once (queued or running), running `workers` at a time.
#[derive(Clone)]
pub struct EmbedQueue {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
    capacity: usize,
    rejected: Arc<AtomicU64>,
}

impl EmbedQueue {
    pub fn new(capacity: usize, workers: usize) -> Self {
        Self {
            admitted: Arc::new(Semaphore::new(capacity.max(1))),
            running: Arc::new(Semaphore::new(workers.max(1))),
            capacity: capacity.max(1),
            rejected: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Jobs queued or running now.
    pub fn depth(&self) -> usize {
        self.capacity - self.admitted.available_permits()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Jobs refused because the queue was full, since start.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Runs `job` on a blocking thread once a worker is free; fails at once when full.
    pub async fn run<T, F>(&self, job: F) -> Result<T, QueueFull>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let Ok(_admit) = self.admitted.clone().try_acquire_owned() else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(QueueFull);
        };
        let _run = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| QueueFull)?;
        match tokio::task::spawn_blocking(job).await {
            Ok(v) => Ok(v),
            // The job panicked: re-raise it here so the caller's panic handling sees it.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_refuses_at_once() {
        let q = EmbedQueue::new(2, 1);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut jobs = Vec::new();
        for _ in 0..2 {
            let q = q.clone();
            let rx = rx.clone();
            jobs.push(tokio::spawn(async move {
                q.run(move || {
                    let _ = rx.lock().unwrap().recv();
                })
                .await
            }));
        }
        while q.depth() < 2 {
            tokio::task::yield_now().await;
        }
        assert!(q.run(|| ()).await.is_err());
        assert_eq!(q.rejected(), 1);
        tx.send(()).unwrap();
        tx.send(()).unwrap();
        for j in jobs {
            j.await.unwrap().unwrap();
        }
        assert_eq!(q.depth(), 0);
        assert_eq!(q.run(|| 7).await.unwrap(), 7);
    }
}
