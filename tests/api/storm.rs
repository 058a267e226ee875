//! A disconnect storm: 200 exports cut at random points (mixed formats and codings) leave no backend and no
//! pool slot behind, and memory bounded.

use std::time::{Duration, Instant};

use crate::helpers::{BIG_VIEW, RawResponse, ServerProcess, TestDb, small_table, wait_for};

/// The number of lines a GET of `url` returns.
async fn lines(url: &str) -> usize {
    reqwest::get(url).await.unwrap().text().await.unwrap().lines().count()
}

/// Current resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn two_hundred_cut_exports_leave_no_backend_or_slot_behind() {
    let db = TestDb::new().await;
    db.client.batch_execute(BIG_VIEW).await.unwrap();
    small_table(&db, 100).await;
    let server = ServerProcess::start(
        &db,
        "[server]\nworkers = 2\n\n[database]\npool_size = 12\nacquire_timeout = \"10s\"\n\n\
         [[datasets]]\nname = \"big\"\ntable = \"big\"\n\n[[datasets]]\nname = \"small\"\ntable = \"small\"\nkey = \"id\"\n",
    )
    .await;
    let small = format!("http://{}/v1/datasets/small/rows", server.base);
    for _ in 0..4 {
        assert_eq!(lines(&small).await, 100);
    }
    let baseline_rss = rss_kib(server.child.id());
    let baseline_backends = db.pgspout_backends().await.len();

    let variants = [
        ("/v1/datasets/big/rows", "identity"),
        ("/v1/datasets/big/rows?format=csv", "identity"),
        ("/v1/datasets/big/rows", "gzip"),
        ("/v1/datasets/big/rows?format=csv", "zstd"),
        ("/v1/datasets/big/rows", "br"),
    ];
    let mut seed: u64 = 0x5eed;
    let mut next_random = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    let mut after_storm = Vec::new();
    for storm in 0..2 {
        for _wave in 0..5 {
            let mut clients = Vec::new();
            for _ in 0..20 {
                let (path, coding) = variants[next_random() % variants.len()];
                let chunks = 1 + next_random() % 8;
                let base = server.base.clone();
                clients.push(tokio::spawn(async move {
                    let mut response = RawResponse::get(&base, path, &[("Accept-Encoding", coding)]).await;
                    assert_eq!(response.status, 200);
                    for _ in 0..chunks {
                        response.next_chunk().await.unwrap().unwrap();
                    }
                    // Dropped here: the client hangs up mid-export.
                }));
            }
            for client in clients {
                client.await.unwrap();
            }
        }
        let hung_up = Instant::now();
        let settled = wait_for(Duration::from_secs(5), || async {
            let backends = db.pgspout_backends().await;
            (backends.iter().all(|b| b.1 != "active") && backends.len() <= baseline_backends).then(|| hung_up.elapsed())
        })
        .await;
        let started = Instant::now();
        assert_eq!(lines(&small).await, 100);
        let next_request = started.elapsed();
        let rss = rss_kib(server.child.id());
        let fds = std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
            .unwrap()
            .count();
        eprintln!(
            "figure: storm {storm}: 100 exports cut; backends back to baseline ({baseline_backends}) {settled:?} after the \
             last hang-up; next request {next_request:?}; RSS {baseline_rss} KiB before the storms, {rss} KiB now; \
             {fds} open files"
        );
        assert!(settled < Duration::from_secs(1), "backends took {settled:?} to go");
        assert!(
            next_request < Duration::from_millis(500),
            "the next request took {next_request:?}"
        );
        after_storm.push(rss);
    }
    // Memory freed by the cut exports goes back to the system (jemalloc purges in the background). What
    // stays is a small constant (thread caches, pooled connections' buffers), the same after one storm or two.
    let quiet = Instant::now();
    let below = wait_for(Duration::from_secs(30), || async {
        let rss = rss_kib(server.child.id());
        (rss <= baseline_rss + 6 * 1024).then_some(quiet.elapsed())
    })
    .await;
    // Purging goes on for a while; the figure is taken once it has had its time.
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(quiet.elapsed())).await;
    let settled_rss = rss_kib(server.child.id());
    assert!(
        settled_rss <= baseline_rss + 6 * 1024,
        "RSS rose again to {settled_rss} KiB"
    );
    eprintln!(
        "figure: RSS {baseline_rss} KiB before the storms, {after_storm:?} KiB after each; within 6 MiB of the \
         baseline {below:?} later, {settled_rss} KiB after {:?}",
        quiet.elapsed()
    );
}
