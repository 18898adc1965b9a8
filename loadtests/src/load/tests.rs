use super::*;

fn config(concurrency: usize, max_requests: usize) -> LoadConfig {
    LoadConfig::new(concurrency, max_requests, Duration::from_secs(30))
}

#[tokio::test]
async fn every_request_is_sent_once_and_counted() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let m = run(&config(4, 50), move |i| {
        let record = record.clone();
        async move {
            record
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(i);
            if i % 10 == 3 {
                Err(Failure::new("odd", format!("request {i}")))
            } else {
                Ok(Done {
                    documents: 2,
                    executor_ms: vec![("encoder".into(), 1.5)],
                })
            }
        }
    })
    .await;
    let mut sent = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
    sent.sort_unstable();
    assert_eq!(sent, (0..50).collect::<Vec<_>>());
    assert_eq!((m.requests(), m.error_count(), m.documents), (45, 5, 90));
    assert_eq!(m.errors["odd"].samples.len(), SAMPLES);
    assert_eq!(m.executors["encoder"].len(), 45);
    assert!((m.executors["encoder"].quantile_ms(0.5) - 1.5).abs() < 0.01);
    let in_series: usize = m.series.iter().map(|s| s[0] + s[2]).sum();
    assert_eq!(in_series, 50);
    assert_eq!(m.error_samples().len(), SAMPLES);
    assert!(m.error_samples()[0].starts_with("odd: request"));
}

#[tokio::test]
async fn a_panicking_client_is_an_error_and_keeps_what_it_counted() {
    let m = run(&config(1, 10), |i| async move {
        assert!(i < 4, "request {i} panics");
        Ok(Done::documents(1))
    })
    .await;
    assert_eq!(m.requests(), 4, "the answers before the panic");
    assert_eq!(m.errors["client"].count, 1);
    assert!(m.errors["client"].samples[0].contains("panic"));
}

#[tokio::test]
async fn slow_answers_time_out_and_the_duration_bounds_the_phase() {
    let mut cfg = LoadConfig::new(2, usize::MAX, Duration::from_millis(300));
    cfg.timeout = Duration::from_millis(50);
    let started = Instant::now();
    let m = run(&cfg, |_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(Done::default())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(m.requests(), 0);
    assert!(m.errors["timeout"].count >= 2, "{:?}", m.errors);
    assert!(m.latency_ms(0.5).is_nan());
}

#[tokio::test]
async fn warm_up_requests_are_sent_first_and_not_measured() {
    let sent = Arc::new(AtomicUsize::new(0));
    let count = sent.clone();
    let mut cfg = config(1, 3);
    cfg.warmup = 2;
    let live = Arc::new(Live::default());
    let m = run_observed(&cfg, &live, move |i| {
        let n = count.fetch_add(1, Ordering::Relaxed);
        async move {
            if n == 0 {
                Err(Failure::new("cold", "first call"))
            } else {
                Ok(Done::documents(i))
            }
        }
    })
    .await;
    assert_eq!(sent.load(Ordering::Relaxed), 5);
    assert_eq!((m.requests(), m.error_count()), (3, 0));
    assert_eq!(m.warmup_failure.map(|f| f.kind).as_deref(), Some("cold"));
    assert_eq!(live.requests.load(Ordering::Relaxed), 3);
    assert_eq!(live.documents.load(Ordering::Relaxed), 3, "0 + 1 + 2");
    assert_eq!(live.take_recent().len(), 3);
    assert!(live.take_recent().is_empty());
}

#[tokio::test]
async fn an_unbounded_duration_does_not_overflow() {
    let cfg = LoadConfig::new(2, 4, Duration::MAX);
    let m = run(&cfg, |_| async { Ok(Done::documents(1)) }).await;
    assert_eq!((m.requests(), m.documents), (4, 4));
}
