//! Bad input, authentication and the operational routes.

use reqwest::StatusCode;

use crate::helpers::TestApp;

#[tokio::test]
async fn health_answers() {
    let t = TestApp::spawn().await;
    let (status, body) = t.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["db"], "ok");
}
