//! Graceful shutdown of the process: on SIGTERM or SIGINT, stop accepting, let running exports finish within
//! the grace period, cut the rest visibly, exit 0.

use std::time::{Duration, Instant};

use crate::helpers::{BIG_VIEW, RawResponse, ServerProcess, TestDb, small_table};

/// Signals a server with `shutdown_grace` = `grace` while two exports run.
async fn shutdown_on(signal: &str, grace: Duration) {
    let db = TestDb::new().await;
    db.client.batch_execute(BIG_VIEW).await.unwrap();
    small_table(&db, 3000).await;
    let mut server = ServerProcess::start(
        &db,
        &format!(
            "[server]\nworkers = 1\nshutdown_grace = \"{}ms\"\n\n[[datasets]]\nname = \"big\"\ntable = \"big\"\n\n\
             [[datasets]]\nname = \"small\"\ntable = \"small\"\nkey = \"id\"\n",
            grace.as_millis()
        ),
    )
    .await;
    // One export that cannot finish within the grace period, one that can; both started before the signal.
    let mut endless = RawResponse::get(&server.base, "/v1/datasets/big/rows", &[]).await;
    let mut short = RawResponse::get(&server.base, "/v1/datasets/small/rows", &[]).await;
    endless.next_chunk().await.unwrap().unwrap();
    let status = std::process::Command::new("kill")
        .args([signal, &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let signalled = Instant::now();

    // New connections are refused at once.
    crate::helpers::wait_until(Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(&server.base).await.is_err()
    })
    .await;
    // The short export still completes cleanly.
    let (chunks, terminated) = short.read_to_end().await;
    assert!(
        terminated,
        "{signal}: an export that finishes within the grace period ends cleanly"
    );
    assert_eq!(chunks.concat().iter().filter(|b| **b == b'\n').count(), 3000);
    // The endless one keeps streaming during the grace period, then is cut without the terminating chunk.
    let (_, terminated) = endless.read_to_end().await;
    assert!(
        !terminated,
        "{signal}: an export cut by shutdown must not look complete"
    );
    // Cut at the end of the grace period, sub-second ones included (actix itself counts whole seconds).
    let cut_after = signalled.elapsed();
    assert!(
        cut_after >= grace.mul_f32(0.8) && cut_after < grace + Duration::from_millis(250),
        "{signal}: cut after {cut_after:?}, grace {grace:?}"
    );
    let exit = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        (status, server)
    })
    .await
    .unwrap()
    .0;
    assert!(exit.success(), "{signal}: pgspout exited with {exit}");
    eprintln!(
        "figure: {signal}: refused new connections at once; the short export ended cleanly; the endless one was \
         cut {cut_after:?} after the signal (grace {grace:?}); exit {exit}"
    );
    assert!(signalled.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn sigterm_drains_then_cuts_and_exits_zero() {
    shutdown_on("-TERM", Duration::from_secs(2)).await;
}

#[tokio::test]
async fn sigint_drains_like_sigterm_and_honours_a_sub_second_grace() {
    shutdown_on("-INT", Duration::from_millis(700)).await;
}
