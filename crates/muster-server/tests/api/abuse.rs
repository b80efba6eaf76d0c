//! The server under abuse: made-up methods and paths, idle and half-open sockets, floods of
//! connections, oversize declarations, hostile pages in the operator's browser, and strings
//! longer or stranger than any real client sends. Raw TCP is used where an HTTP client would
//! refuse to misbehave.

use reqwest::Method;

use crate::helpers::TestApp;

#[tokio::test]
async fn made_up_methods_and_paths_never_become_metric_labels() {
    let t = TestApp::spawn().await;
    let mut made_up = Vec::new();
    for n in 0..50 {
        let token = uuid::Uuid::now_v7().simple().to_string()[20..].to_uppercase();
        let method = format!("X{token}{n}");
        let path = format!("/made-up-{token}-{n}");
        let m = Method::from_bytes(method.as_bytes()).expect("a method token");
        // A made-up method on a route that exists, on a path that does not, and a plain GET
        // of a path that does not.
        for (m, p) in [
            (m.clone(), "/api/v1/tasks".to_owned()),
            (m, path.clone()),
            (Method::GET, path.clone()),
        ] {
            let resp = t.client.request(m, t.url(&p)).send().await.expect("sent");
            assert!(resp.status().is_client_error(), "{p}: {}", resp.status());
        }
        made_up.push(method);
        made_up.push(path);
    }
    let text = t
        .client
        .get(t.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("body");
    for name in &made_up {
        assert!(!text.contains(name.as_str()), "{name} became a label");
    }
    // Every label of the request histogram comes from a closed set.
    const METHODS: &[&str] = &[
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other",
    ];
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("muster_http_request_seconds_count{"))
        .collect();
    assert!(!series.is_empty(), "{text}");
    for line in series {
        let method = line
            .split("method=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a method label");
        assert!(METHODS.contains(&method), "{line}");
        let route = line
            .split("route=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a route label");
        assert!(
            route == "unmatched" || route.starts_with('/') && !route.contains("made-up"),
            "{line}"
        );
    }
    assert!(
        text.contains(r#"method="other",route="/api/v1/tasks",status="405""#),
        "{text}"
    );
}
