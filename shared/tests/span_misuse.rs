//! The subscriber `telemetry::init` installs must survive a span entered across an `.await`
//! somewhere in the process (our code forbids it through clippy's `await_holding_invalid_type`;
//! a dependency may still do it). tracing-subscriber 0.3.22 and 0.3.23 panic here ("tried to
//! clone a span that already closed", tokio-rs/tracing#3514) inside whatever task next asks for
//! the current span, such as sqlx committing a job's transaction; 0.3.20 does not. This test
//! pins that choice.

use std::time::Duration;

use provisioner_shared::{config::LogFormat, telemetry};
use tracing::{Span, info_span};

async fn asks_for_the_current_span(rounds: usize) {
    for _ in 0..rounds {
        let _ = Span::current();
        tokio::task::yield_now().await;
    }
}

#[expect(
    clippy::await_holding_invalid_type,
    reason = "the misuse this test proves harmless"
)]
async fn holds_an_entered_span_across_awaits(rounds: usize) {
    for _ in 0..rounds {
        let span = info_span!("misused");
        let _entered = span.enter();
        tokio::task::yield_now().await;
    }
}

#[test]
fn a_span_held_across_an_await_elsewhere_does_not_panic_other_tasks() {
    // Nothing is printed: the filter passes no event, but spans still go through the registry.
    telemetry::init(LogFormat::Pretty);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            tasks.push(tokio::spawn(asks_for_the_current_span(20_000)));
            tasks.push(tokio::spawn(holds_an_entered_span_across_awaits(20_000)));
        }
        for task in tasks {
            let joined = tokio::time::timeout(Duration::from_secs(120), task)
                .await
                .expect("the tasks end");
            assert!(joined.is_ok(), "a task panicked: {joined:?}");
        }
    });
}
