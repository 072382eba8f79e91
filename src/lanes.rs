//! The process-wide CPU plan: how many forward passes run at once ("lanes"), how many of
//! libtorch's intra-op threads each may use, and the threads that prepare inputs, so that
//! concurrency never oversubscribes the cores.
//!
//! One request at a time (the sequential handler, Python), a single lane gives each forward pass
//! every usable CPU. When Lambda sends concurrent requests (`AWS_LAMBDA_MAX_CONCURRENCY` above 1),
//! there is one lane per usable CPU, each forward pass on one thread: batches of one model or of
//! several run side by side instead of queueing behind a pass whose threads wait on each other
//! (measured on 2 cores with ResNet-18: two one-thread lanes serve more images per second than
//! one two-thread lane, and a lone request meets a free lane instead of a whole batch ahead).
//! Each lane is a thread of its own, and every forward pass runs on one of them: OpenMP keeps a
//! team of threads per calling thread, and passes from ever new callers (Tokio's blocking threads,
//! Python threads) were up to twice as slow as passes from one thread (MobileNetV3 at two threads:
//! 31 ms from a second thread once the first had run a pass, against 11 ms; Python torch alike).
//! libtorch's thread count is per calling thread under OpenMP (`omp_set_num_threads`), so each
//! pass sets its own before it runs.
//!
//! Inputs are prepared (decoded, resized, normalised, tokenized) by the plan's workers, one
//! thread per usable CPU: a batch's images in parallel, and under concurrent requests every
//! request's inputs, so that however many requests are in flight at most that many threads
//! prepare inputs beside the lanes. One request at a time, a single input is prepared on its
//! caller's thread (no hand-off).

use std::sync::{Condvar, Mutex, OnceLock};

use crate::backend;
use crate::model::usable_cpus;

/// The plan: `lanes` forward passes at once, each with at most `threads` intra-op threads.
#[derive(Debug)]
pub struct Lanes {
    lanes: usize,
    threads: usize,
    /// Requests may arrive concurrently: every request's inputs are prepared by `workers`.
    concurrent: bool,
    /// One thread per lane; `None` if they could not be spawned: passes then run on their
    /// callers' threads, still at most `lanes` at once.
    pool: Option<rayon::ThreadPool>,
    /// One thread per usable CPU (a Lambda function's memory buys a share of the host's, which
    /// rayon's global pool ignores); `None` if they could not be spawned: inputs are then
    /// prepared on their callers' threads.
    workers: Option<rayon::ThreadPool>,
    free: Mutex<usize>,
    freed: Condvar,
}

/// A forward pass's place in a lane when it runs on its caller's thread; dropped when it ends.
#[derive(Debug)]
struct Lane<'a> {
    plan: &'a Lanes,
}

impl Drop for Lane<'_> {
    fn drop(&mut self) {
        *self.plan.lock() += 1;
        self.plan.freed.notify_one();
    }
}

impl Lanes {
    /// The plan for `cpus` usable CPUs: one lane, or one per CPU when requests arrive
    /// `concurrent`ly.
    pub fn new(concurrent: bool, cpus: usize) -> Lanes {
        let cpus = cpus.max(1);
        let lanes = if concurrent { cpus } else { 1 };
        let pool = |threads: usize, name: &'static str| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(move |i| format!("lambdatorch-{name}-{i}"))
                .build()
                .ok()
        };
        Lanes {
            lanes,
            threads: (cpus / lanes).max(1),
            concurrent,
            pool: pool(lanes, "lane"),
            workers: pool(cpus, "worker"),
            free: Mutex::new(lanes),
            freed: Condvar::new(),
        }
    }

    /// The process's plan, for the CPUs it may use and whether Lambda sends concurrent requests.
    pub fn global() -> &'static Lanes {
        static PLAN: OnceLock<Lanes> = OnceLock::new();
        PLAN.get_or_init(|| Lanes::new(concurrent(), usable_cpus()))
    }

    /// The threads that prepare a batch's inputs in parallel (`None`: none could be spawned).
    pub fn workers(&self) -> Option<&rayon::ThreadPool> {
        self.workers.as_ref()
    }

    /// Prepares a request's inputs with `work`: on the workers when requests arrive
    /// concurrently, on the caller's thread otherwise.
    pub fn prepare<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        match &self.workers {
            Some(workers) if self.concurrent => workers.install(work),
            _ => work(),
        }
    }

    /// Forward passes that may run at once.
    pub fn count(&self) -> usize {
        self.lanes
    }

    /// The intra-op threads for a pass of a model that asks for `wanted`.
    pub fn threads(&self, wanted: usize) -> usize {
        wanted.clamp(1, self.threads)
    }

    /// Runs `pass` in a free lane (waiting for one) with libtorch's intra-op threads set for a
    /// model that asks for `wanted`; returns what it returns.
    pub fn run<R: Send>(&self, wanted: usize, pass: impl FnOnce() -> R + Send) -> R {
        let threads = self.threads(wanted);
        let pass = move || {
            backend::set_threads(threads);
            pass()
        };
        match &self.pool {
            Some(pool) => pool.install(pass),
            None => {
                let _lane = self.acquire();
                pass()
            }
        }
    }

    /// Waits for a free lane.
    fn acquire(&self) -> Lane<'_> {
        let mut free = self.lock();
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *free -= 1;
        Lane { plan: self }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        // A count, consistent between statements: a panic elsewhere cannot tear it.
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether Lambda sends this process concurrent requests (`AWS_LAMBDA_MAX_CONCURRENCY` above 1).
pub fn concurrent() -> bool {
    std::env::var("AWS_LAMBDA_MAX_CONCURRENCY")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .is_some_and(|n| n > 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_plan_never_gives_out_more_threads_than_cpus() {
        let plan = Lanes::new(true, 2);
        assert_eq!((plan.count(), plan.threads(4)), (2, 1));
        let plan = Lanes::new(false, 8);
        assert_eq!((plan.count(), plan.threads(8), plan.threads(3)), (1, 8, 3));
        let plan = Lanes::new(true, 4);
        assert_eq!((plan.count(), plan.threads(0)), (4, 1));
        let plan = Lanes::new(true, 0);
        assert_eq!((plan.count(), plan.threads(2)), (1, 1));
    }

    #[test]
    fn under_concurrency_inputs_are_prepared_by_one_worker_per_cpu() {
        let caller = std::thread::current().id();
        assert_eq!(
            Lanes::new(false, 2).prepare(|| std::thread::current().id()),
            caller
        );
        let plan = Lanes::new(true, 2);
        let (running, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let name = plan.prepare(|| {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                        std::thread::current().name().map(str::to_owned)
                    });
                    assert!(name.is_some_and(|n| n.starts_with("lambdatorch-worker-")));
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 2, "8 requests, 2 CPUs");
    }

    #[test]
    fn at_most_count_passes_run_at_once_each_on_a_lane_thread() {
        let plan = Lanes::new(true, 2);
        let (running, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let threads = Mutex::new(std::collections::HashSet::new());
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    plan.run(2, || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        threads
                            .lock()
                            .expect("not poisoned")
                            .insert(std::thread::current().id());
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(
            threads.lock().expect("not poisoned").len(),
            2,
            "8 callers, 2 lanes"
        );
    }
}
