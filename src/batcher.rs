//! Dynamic batching: requests for the same model that arrive together share one forward pass.
//!
//! Each request preprocesses its own input on its own thread, then queues it here. The first
//! queued request becomes the leader: it waits for the requests still preprocessing to queue
//! theirs, at most `max_delay` and never when nobody else is coming (a lone request runs at once),
//! takes up to `max_batch` rows in arrival order, runs them as one batch and hands every request
//! its own rows of the output. Only inputs of the same shapes beyond the batch dimension share a
//! batch (tensors of one shape), unless the model's inputs may be padded: a text model's
//! `[batch, tokens]` tensors of different lengths are padded to the longest, as its tokenizer
//! pads a request's own texts (see [`LengthPadding`]); the others wait for the next. As
//! many batches of a model run at once as the process has forward lanes ([`crate::lanes`]); while
//! they run, new requests queue up, so under load the next batch forms by itself even with no
//! delay. A request whose input fails before it is queued leaves the others unaffected; if a
//! batch of several requests fails, each request is run alone, so an error reaches only the
//! request that causes it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{contain, Error, Result};
use crate::tensor::TensorData;

/// How a request's rows were run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batched {
    /// Milliseconds between queueing and the start of the forward pass.
    pub queue_ms: f64,
    /// Rows in the forward pass, this request's included.
    pub batch_size: usize,
}

/// How inputs of different lengths share a batch: each input is `[batch, length]` and is padded
/// along its length to the longest with its own value, as a tokenizer pads a batch of texts. The
/// model then answers each row as it does within its own request (its attention mask hides the
/// padding), except that outputs per token come back longer, which their requester cuts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LengthPadding {
    /// Per input, in the model's order: the value it is padded with.
    pub values: Vec<i64>,
    /// Whether padding goes before the tokens rather than after.
    pub left: bool,
}

/// A model's batching queue.
#[derive(Debug)]
pub struct Batcher {
    max_batch: usize,
    max_delay: Duration,
    /// Whether inputs of different lengths may share a batch, and how.
    padding: Option<LengthPadding>,
    /// Batches of this model that may run at once.
    lanes: usize,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Requests that announced themselves ([`Batcher::enter`]) and have not queued yet.
    preparing: usize,
    queue: VecDeque<Job>,
    /// Someone is gathering the next batch.
    gathering: bool,
    /// Batches of this model in their forward pass.
    running: usize,
    next_id: u64,
    done: HashMap<u64, Result<(TensorData, Batched)>>,
}

#[derive(Debug)]
struct Job {
    id: u64,
    /// The model's inputs, batch first.
    inputs: Vec<tch::Tensor>,
    /// Each input's shape after the batch dimension: jobs batch together only where these match.
    shapes: Vec<Vec<i64>>,
    rows: usize,
    queued: Instant,
}

/// A request on its way to the queue: while it preprocesses, a gathering leader waits for it.
/// Dropped without [`Ticket::run`] (the input failed), it stops being waited for.
#[derive(Debug)]
pub struct Ticket<'a> {
    batcher: &'a Batcher,
    queued: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.queued {
            let mut state = self.batcher.lock();
            state.preparing -= 1;
            drop(state);
            self.batcher.changed.notify_all();
        }
    }
}

impl Batcher {
    /// A queue that batches up to `max_batch` rows, waiting at most `max_delay` for more, and
    /// runs up to `lanes` batches at once.
    pub fn new(max_batch: usize, max_delay: Duration, lanes: usize) -> Batcher {
        Batcher {
            max_batch: max_batch.max(1),
            max_delay,
            padding: None,
            lanes: lanes.max(1),
            state: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    /// This queue, batching inputs of different lengths padded as `padding` says.
    pub fn padded(self, padding: LengthPadding) -> Batcher {
        Batcher {
            padding: Some(padding),
            ..self
        }
    }

    /// Whether inputs padded into a batch get their padding before their tokens.
    pub fn pads_left(&self) -> bool {
        self.padding.as_ref().is_some_and(|padding| padding.left)
    }

    /// Whether `a` and `b` may run in one batch: inputs of the same shapes, or `[batch, length]`
    /// inputs that padding makes so.
    fn fits(&self, a: &Job, b: &Job) -> bool {
        a.shapes == b.shapes
            || self.padding.as_ref().is_some_and(|padding| {
                let lengths = |job: &Job| job.shapes.iter().all(|shape| shape.len() == 1);
                a.shapes.len() == padding.values.len()
                    && b.shapes.len() == padding.values.len()
                    && lengths(a)
                    && lengths(b)
            })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements; a panic elsewhere cannot tear it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Announces a request before it preprocesses, so that a leader waits for its input.
    pub fn enter(&self) -> Ticket<'_> {
        self.lock().preparing += 1;
        Ticket {
            batcher: self,
            queued: false,
        }
    }

    /// Queues `inputs` (the model's inputs, batch first, at most `max_batch` rows) and returns
    /// this request's rows of the output. `forward` runs one batch; whichever request leads calls
    /// it for everyone.
    pub fn run(
        &self,
        mut ticket: Ticket<'_>,
        inputs: Vec<tch::Tensor>,
        forward: impl Fn(&[tch::Tensor]) -> Result<TensorData>,
    ) -> Result<(TensorData, Batched)> {
        let sizes: Vec<Vec<i64>> = inputs.iter().map(tch::Tensor::size).collect();
        let rows = sizes
            .first()
            .and_then(|size| size.first())
            .map_or(1, |&n| n.max(1) as usize);
        let shapes = sizes
            .into_iter()
            .map(|size| size.into_iter().skip(1).collect())
            .collect();
        let mut state = self.lock();
        ticket.queued = true;
        state.preparing -= 1;
        let id = state.next_id;
        state.next_id += 1;
        state.queue.push_back(Job {
            id,
            inputs,
            shapes,
            rows,
            queued: Instant::now(),
        });
        self.changed.notify_all();
        loop {
            if let Some(result) = state.done.remove(&id) {
                return result;
            }
            if state.gathering || state.running >= self.lanes || state.queue.is_empty() {
                state = self.wait(state, None);
                continue;
            }
            state.gathering = true;
            let deadline = Instant::now() + self.max_delay;
            while state.preparing > 0 && self.queued_rows(&state) < self.max_batch {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                state = self.wait(state, Some(deadline - now));
            }
            let batch = self.take_batch(&mut state);
            state.gathering = false;
            state.running += 1;
            drop(state);
            let results = run_batch(batch, &forward, self.padding.as_ref());
            state = self.lock();
            state.running -= 1;
            state.done.extend(results);
            self.changed.notify_all();
        }
    }

    fn wait<'a>(
        &self,
        state: MutexGuard<'a, State>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, State> {
        match timeout {
            Some(timeout) => {
                let (state, _) = self
                    .changed
                    .wait_timeout(state, timeout)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                state
            }
            None => self
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }

    fn queued_rows(&self, state: &State) -> usize {
        state.queue.iter().map(|job| job.rows).sum()
    }

    /// The queue's first job and, in arrival order, the jobs of its shapes that fit `max_batch`
    /// rows with it; the others stay queued.
    fn take_batch(&self, state: &mut State) -> Vec<Job> {
        let Some(first) = state.queue.pop_front() else {
            return Vec::new();
        };
        let mut rows = first.rows;
        let mut batch = vec![first];
        let mut i = 0;
        while i < state.queue.len() {
            let job = &state.queue[i];
            if !self.fits(&batch[0], job) {
                i += 1;
                continue;
            }
            if rows + job.rows > self.max_batch {
                break;
            }
            rows += job.rows;
            batch.extend(state.queue.remove(i));
        }
        batch
    }
}

/// Runs `jobs` as one forward pass (padded to one length by `padding`, if they differ) and splits
/// the output by rows; if a batch of several fails, runs each job alone, so that a failure stays
/// with the request that causes it. A panic counts as a failure: it must not unwind the leader
/// past the requests waiting on this batch, which would then never be answered.
fn run_batch(
    jobs: Vec<Job>,
    forward: &impl Fn(&[tch::Tensor]) -> Result<TensorData>,
    padding: Option<&LengthPadding>,
) -> Vec<(u64, Result<(TensorData, Batched)>)> {
    let forward = |inputs: &[tch::Tensor]| contain(|| forward(inputs));
    let started = Instant::now();
    let batch_size: usize = jobs.iter().map(|job| job.rows).sum();
    let batched = |job: &Job, batch_size| Batched {
        queue_ms: (started - job.queued).as_secs_f64() * 1e3,
        batch_size,
    };
    if let [job] = &jobs[..] {
        let result = forward(&job.inputs).map(|output| (output, batched(job, job.rows)));
        return vec![(job.id, result)];
    }
    let output = contain(|| run_together(&jobs, &forward, padding));
    match output {
        Ok(parts) => jobs
            .iter()
            .zip(parts)
            .map(|(job, part)| (job.id, Ok((part, batched(job, batch_size)))))
            .collect(),
        Err(_) => jobs
            .iter()
            .map(|job| {
                let result = forward(&job.inputs).map(|output| (output, batched(job, job.rows)));
                (job.id, result)
            })
            .collect(),
    }
}

/// `jobs` as one forward pass: each input padded to the longest of the batch (where `padding`
/// allows) and concatenated along the batch dimension, the output split back into their rows.
fn run_together(
    jobs: &[Job],
    forward: &impl Fn(&[tch::Tensor]) -> Result<TensorData>,
    padding: Option<&LengthPadding>,
) -> Result<Vec<TensorData>> {
    (0..jobs[0].inputs.len())
        .map(|k| {
            let longest = jobs
                .iter()
                .filter_map(|job| job.shapes.get(k)?.first())
                .max();
            let column = jobs
                .iter()
                .filter_map(|job| Some((job.inputs.get(k)?, job.shapes.get(k)?.first())))
                .map(|(input, length)| match (padding, length, longest) {
                    (Some(padding), Some(&length), Some(&longest)) if length < longest => {
                        let pads = longest - length;
                        let sides = if padding.left { [pads, 0] } else { [0, pads] };
                        let value = padding.values.get(k).copied().unwrap_or(0) as f64;
                        input.f_pad(sides, "constant", value)
                    }
                    _ => Ok(input.shallow_clone()),
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|err| Error::internal("batch padding", err))?;
            tch::Tensor::f_cat(&column, 0).map_err(|err| Error::internal("batch", err))
        })
        .collect::<Result<Vec<_>>>()
        .and_then(|batch| forward(&batch))
        .and_then(|output| {
            let rows: Vec<usize> = jobs.iter().map(|job| job.rows).collect();
            output.split_rows(&rows)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Elements;

    /// A "model" of one or more inputs: twice their sum.
    fn doubled(inputs: &[tch::Tensor]) -> Result<TensorData> {
        let mut sum = inputs[0].shallow_clone();
        for input in &inputs[1..] {
            sum = sum
                .f_add(input)
                .map_err(|err| Error::internal("test", err))?;
        }
        let output = sum
            .f_mul_scalar(2)
            .map_err(|err| Error::internal("test", err))?;
        TensorData::from_torch(&output)?.ok_or_else(|| Error::internal("test", "dtype"))
    }

    /// What each of the scoped threads returned, in order.
    fn joined<T>(handles: Vec<std::thread::ScopedJoinHandle<'_, T>>) -> Vec<T> {
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    }

    fn row(value: f32) -> Vec<tch::Tensor> {
        vec![tch::Tensor::from_slice(&[value, value + 0.5]).reshape([1, 2])]
    }

    #[test]
    fn a_lone_request_runs_at_once() -> Result<()> {
        let batcher = Batcher::new(8, Duration::from_secs(10), 1);
        let started = Instant::now();
        let (output, batched) = batcher.run(batcher.enter(), row(1.0), doubled)?;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "it waited for nobody"
        );
        assert_eq!(output.elements, Elements::Float32(vec![2.0, 3.0]));
        assert_eq!(batched.batch_size, 1);
        Ok(())
    }

    #[test]
    fn concurrent_requests_share_batches_and_get_their_own_rows() {
        let batcher = Batcher::new(4, Duration::from_millis(200), 1);
        let sizes = std::thread::scope(|s| {
            let handles: Vec<_> = (0..12)
                .map(|i| {
                    let batcher = &batcher;
                    s.spawn(move || {
                        let ticket = batcher.enter();
                        std::thread::sleep(Duration::from_millis(5 * (i % 3)));
                        let (output, batched) =
                            batcher.run(ticket, row(i as f32), doubled).expect("answer");
                        let value = i as f32 * 2.0;
                        assert_eq!(output.elements, Elements::Float32(vec![value, value + 1.0]));
                        assert_eq!(output.shape, vec![1, 2]);
                        batched.batch_size
                    })
                })
                .collect();
            joined(handles)
        });
        assert!(sizes.iter().all(|&n| (1..=4).contains(&n)), "{sizes:?}");
        assert!(sizes.iter().any(|&n| n > 1), "no batch formed: {sizes:?}");
    }

    #[test]
    fn batches_of_one_model_run_side_by_side_in_its_lanes() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let batcher = Batcher::new(2, Duration::ZERO, 2);
        let (running, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let slow = |input: &[tch::Tensor]| -> Result<TensorData> {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
            running.fetch_sub(1, Ordering::SeqCst);
            doubled(input)
        };
        std::thread::scope(|s| {
            for i in 0..8 {
                let (batcher, slow) = (&batcher, &slow);
                s.spawn(move || {
                    let (output, batched) = batcher
                        .run(batcher.enter(), row(i as f32), slow)
                        .expect("answer");
                    let value = i as f32 * 2.0;
                    assert_eq!(output.elements, Elements::Float32(vec![value, value + 1.0]));
                    assert!(batched.batch_size <= 2);
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 2, "never two batches at once");
    }

    #[test]
    fn a_failing_input_fails_only_its_own_request() {
        let batcher = Batcher::new(8, Duration::from_millis(100), 1);
        // The "model" refuses rows holding a negative number.
        let picky = |input: &[tch::Tensor]| -> Result<TensorData> {
            let negative = input[0]
                .f_lt(0)
                .and_then(|t| t.f_any())
                .map_err(|err| Error::internal("test", err))?;
            if bool::try_from(negative).unwrap_or(true) {
                return Err(Error::inference("picky", "negative input"));
            }
            doubled(input)
        };
        let results = std::thread::scope(|s| {
            let handles: Vec<_> = [1.0f32, -1.0, 2.0, 3.0]
                .into_iter()
                .map(|value| {
                    let batcher = &batcher;
                    s.spawn(move || batcher.run(batcher.enter(), row(value), picky).is_ok())
                })
                .collect();
            joined(handles)
        });
        assert_eq!(results, vec![true, false, true, true]);
    }

    #[test]
    fn a_panic_in_a_shared_pass_fails_only_the_request_that_causes_it() {
        let batcher = Batcher::new(8, Duration::from_secs(10), 1);
        // The "model" has a bug that panics on rows holding 13.
        let buggy = |input: &[tch::Tensor]| -> Result<TensorData> {
            let output = doubled(input)?;
            if matches!(&output.elements, Elements::Float32(values) if values.contains(&26.0)) {
                panic!("a bug met row 13");
            }
            Ok(output)
        };
        // All announced first, so that the four share the first pass.
        let tickets: Vec<Ticket<'_>> = (0..4).map(|_| batcher.enter()).collect();
        let answers = std::thread::scope(|s| {
            let handles: Vec<_> = tickets
                .into_iter()
                .zip([1.0f32, 13.0, 2.0, 3.0])
                .map(|(ticket, value)| {
                    let batcher = &batcher;
                    s.spawn(move || {
                        let answer = batcher.run(ticket, row(value), buggy);
                        answer.map(|(output, _)| output.elements)
                    })
                })
                .collect();
            joined(handles)
        });
        for (answer, value) in answers.iter().zip([1.0f32, 13.0, 2.0, 3.0]) {
            match answer {
                Ok(elements) => {
                    assert_eq!(
                        elements,
                        &Elements::Float32(vec![2.0 * value, 2.0 * value + 1.0])
                    )
                }
                Err(err) => assert!(
                    value == 13.0
                        && matches!(err, Error::Internal { message, .. } if message.contains("row 13")),
                    "{value}: {err}"
                ),
            }
        }
        assert!(answers[1].is_err(), "the panic reached its request");
        // Nothing is left running or queued: the next request is answered.
        assert!(batcher.run(batcher.enter(), row(4.0), doubled).is_ok());
    }

    #[test]
    fn a_request_that_never_queues_is_not_waited_for() -> Result<()> {
        let batcher = Batcher::new(8, Duration::from_secs(30), 1);
        let abandoned = batcher.enter();
        std::thread::scope(|s| {
            let waiting = s.spawn(|| batcher.run(batcher.enter(), row(1.0), doubled));
            std::thread::sleep(Duration::from_millis(50));
            drop(abandoned); // its input failed to preprocess
            let (_, batched) = waiting.join().expect("no panic")?;
            assert_eq!(batched.batch_size, 1);
            Ok(())
        })
    }

    #[test]
    fn only_inputs_of_the_same_shapes_share_a_batch() {
        // Two-input requests (as a text model's ids and mask) of two lengths, queued alternately
        // (every request announced first, so the leader waits for all of them).
        let batcher = Batcher::new(8, Duration::from_secs(10), 1);
        let request = |value: f32, length: i64| {
            let ids = tch::Tensor::full(
                [1, length],
                f64::from(value),
                (tch::Kind::Float, tch::Device::Cpu),
            );
            vec![ids.shallow_clone(), ids]
        };
        let tickets: Vec<Ticket<'_>> = (0..6).map(|_| batcher.enter()).collect();
        let sizes = std::thread::scope(|s| {
            let handles: Vec<_> = tickets
                .into_iter()
                .enumerate()
                .map(|(i, ticket)| {
                    let batcher = &batcher;
                    s.spawn(move || {
                        let length = if i % 2 == 0 { 3 } else { 5 };
                        let (output, batched) = batcher
                            .run(ticket, request(i as f32, length), doubled)
                            .expect("answer");
                        assert_eq!(output.shape, vec![1, length as usize]);
                        let value = i as f32 * 4.0;
                        assert_eq!(
                            output.elements,
                            Elements::Float32(vec![value; length as usize])
                        );
                        batched.batch_size
                    })
                })
                .collect();
            joined(handles)
        });
        assert_eq!(sizes, vec![3; 6], "one batch per length");
    }

    #[test]
    fn padding_lets_inputs_of_different_lengths_share_a_batch() {
        // Ids padded with 7 and a mask with 0, as a tokenizer pads, on either side.
        for left in [false, true] {
            let padding = LengthPadding {
                values: vec![7, 0],
                left,
            };
            let batcher = Batcher::new(8, Duration::from_secs(10), 1).padded(padding);
            let request = |value: f32, length: i64| {
                let ids = tch::Tensor::full(
                    [1, length],
                    f64::from(value),
                    (tch::Kind::Float, tch::Device::Cpu),
                );
                vec![
                    ids,
                    tch::Tensor::ones([1, length], (tch::Kind::Float, tch::Device::Cpu)),
                ]
            };
            let tickets: Vec<Ticket<'_>> = (0..4).map(|_| batcher.enter()).collect();
            std::thread::scope(|s| {
                for (i, ticket) in tickets.into_iter().enumerate() {
                    let batcher = &batcher;
                    s.spawn(move || {
                        let length = if i % 2 == 0 { 2 } else { 4 };
                        let (output, batched) = batcher
                            .run(ticket, request(i as f32, length), doubled)
                            .expect("answer");
                        assert_eq!(batched.batch_size, 4, "one batch");
                        // Rows come back at the batch's length; the requester cuts its own.
                        assert_eq!(output.shape, vec![1, 4]);
                        let own = 2.0 * (i as f32 + 1.0);
                        let pad = 2.0 * 7.0;
                        let want = match (length, left) {
                            (4, _) => vec![own; 4],
                            (_, false) => vec![own, own, pad, pad],
                            (_, true) => vec![pad, pad, own, own],
                        };
                        assert_eq!(output.elements, Elements::Float32(want), "left: {left}");
                    });
                }
            });
        }
    }
}
