//! `portcullis demo` end to end, in process: the summary and the printed steps.

use portcullis_io_tokio::demo::run_demo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_admits_two_refuses_the_contested_replay_and_reaches_ready() {
    let mut out = Vec::new();
    let summary = run_demo(&mut out).await.expect("the demo completes");
    let text = String::from_utf8(out).expect("the demo prints UTF-8");
    assert_eq!(summary.admitted.len(), 2, "{text}");
    assert_eq!(summary.refused.len(), 1, "{text}");
    let mut ids: Vec<u64> = summary.admitted.iter().map(|m| m.0).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        vec![4, 5],
        "founders are 1..=3, then two admissions: {text}"
    );
    assert_eq!(summary.namespace_ready.namespace, summary.namespace);
    assert!(summary.namespace_ready.members_learned >= 2, "{text}");
    for step in &summary.steps {
        assert!(
            text.contains(&step.name),
            "step `{}` printed: {text}",
            step.name
        );
    }
    assert!(text.contains("total"), "summary table printed: {text}");
    assert!(summary.steps.len() >= 7, "{text}");
}
