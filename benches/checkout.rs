//! Checkout + release of one connection on a warm pool, edgepool against
//! deadpool and bb8 managing the same no-op connection, and edgepool's cost
//! as origins and connections per origin grow.
//!
//! Every pool holds `POOL_SIZE` warm connections. `tasks` tasks share the
//! work on a 2-worker multi-thread runtime; a reported time is per
//! checkout + release, all tasks together (so it is the inverse of
//! throughput). With more tasks than connections, tasks queue: that is the
//! contended case, where a pool's waiter handling shows.

#[path = "support/noop.rs"]
mod noop;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use edgepool::{Origin, Pool};
use noop::{NoopBb8, NoopDeadpool, NoopTransport};
use tokio::runtime::Runtime;
use tokio::sync::Barrier;

const POOL_SIZE: usize = 32;
const TASKS: [usize; 4] = [1, 8, 64, 512];

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs `iters` operations split over `tasks` tasks and returns the wall time.
async fn spread<F, Fut>(iters: u64, tasks: usize, op: F) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per_task = iters.div_ceil(tasks as u64).max(1);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let op = op.clone();
        set.spawn(async move {
            for _ in 0..per_task {
                op().await;
            }
        });
    }
    while set.join_next().await.is_some() {}
    // Scale to the iterations asked for, since tasks may round up.
    start
        .elapsed()
        .mul_f64(iters as f64 / (per_task * tasks as u64) as f64)
}

/// Holds `n` checkouts at once so the pool opens `n` connections, then
/// returns them all: the pool is warm.
async fn warm<F, Fut, L>(n: usize, get: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = L> + Send + 'static,
    L: Send + 'static,
{
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (fut, barrier) = (get(), barrier.clone());
        set.spawn(async move {
            let lease = fut.await;
            barrier.wait().await;
            drop(lease);
        });
    }
    barrier.wait().await;
    while set.join_next().await.is_some() {}
}

fn edgepool_pool(
    rt: &Runtime,
    origins: usize,
    conns: usize,
) -> (Pool<NoopTransport>, Arc<Vec<Origin>>) {
    rt.block_on(async {
        let pool = Pool::builder(NoopTransport)
            .max_connections_per_origin(conns)
            .max_pending_per_origin(4096)
            .build()
            .expect("pool");
        let list: Vec<Origin> = (0..origins)
            .map(|i| Origin::parse(&format!("http://o{i}.example:80")).expect("origin"))
            .collect();
        for origin in &list {
            let (p, o) = (pool.clone(), origin.clone());
            warm(conns, move || {
                let (p, o) = (p.clone(), o.clone());
                async move { p.checkout(&o).await.expect("warm checkout") }
            })
            .await;
        }
        (pool, Arc::new(list))
    })
}

fn checkout_vs_peers(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("checkout_release");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));

    let (pool, origins) = edgepool_pool(&rt, 1, POOL_SIZE);
    let origin = origins[0].clone();
    for tasks in TASKS {
        group.bench_with_input(BenchmarkId::new("edgepool", tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| {
                // One Arc clone per operation, as the peers' pool handles.
                let shared = Arc::new((pool.clone(), origin.clone()));
                rt.block_on(spread(iters, tasks, move || {
                    let shared = shared.clone();
                    async move {
                        shared
                            .0
                            .checkout(&shared.1)
                            .await
                            .expect("checkout")
                            .release()
                    }
                }))
            })
        });
    }

    let deadpool: deadpool::managed::Pool<NoopDeadpool> = rt.block_on(async {
        let p = deadpool::managed::Pool::builder(NoopDeadpool)
            .max_size(POOL_SIZE)
            .build()
            .expect("deadpool");
        let q = p.clone();
        warm(POOL_SIZE, move || {
            let q = q.clone();
            async move { q.get().await.expect("warm get") }
        })
        .await;
        p
    });
    for tasks in TASKS {
        group.bench_with_input(BenchmarkId::new("deadpool", tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| {
                let pool = deadpool.clone();
                rt.block_on(spread(iters, tasks, move || {
                    let pool = pool.clone();
                    async move { drop(pool.get().await.expect("get")) }
                }))
            })
        });
    }

    let bb8: bb8::Pool<NoopBb8> = rt.block_on(async {
        let p = bb8::Pool::builder()
            .max_size(POOL_SIZE as u32)
            .build(NoopBb8)
            .await
            .expect("bb8");
        let q = p.clone();
        warm(POOL_SIZE, move || {
            let q = q.clone();
            async move { q.get_owned().await.expect("warm get") }
        })
        .await;
        p
    });
    for tasks in TASKS {
        group.bench_with_input(BenchmarkId::new("bb8", tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| {
                let pool = bb8.clone();
                rt.block_on(spread(iters, tasks, move || {
                    let pool = pool.clone();
                    async move { drop(pool.get().await.expect("get")) }
                }))
            })
        });
    }
    group.finish();
}

/// One task, so the figure is the data structures' cost and nothing else:
/// it must not grow with the number of origins or of connections.
fn scale(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("scale");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for origins in [1usize, 100, 10_000] {
        let (pool, list) = edgepool_pool(&rt, origins, 1);
        group.bench_with_input(BenchmarkId::new("origins", origins), &origins, |b, _| {
            let mut i = 0usize;
            b.iter(|| {
                // Stride through the origins so lookups are not all cache hits.
                i = (i + 7919) % list.len();
                rt.block_on(pool.checkout(&list[i]))
                    .expect("checkout")
                    .release();
            })
        });
    }
    for conns in [1usize, 100, 1000] {
        let (pool, list) = edgepool_pool(&rt, 1, conns);
        group.bench_with_input(
            BenchmarkId::new("conns_per_origin", conns),
            &conns,
            |b, _| {
                b.iter(|| {
                    rt.block_on(pool.checkout(&list[0]))
                        .expect("checkout")
                        .release()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, checkout_vs_peers, scale);
criterion_main!(benches);
