//! A real headless Chromium driven over WebDriver (chromedriver + fantoccini), one per test,
//! with bounded waits and screenshots under `target/ui-screenshots/`.
//!
//! `MUSTER_TEST_BROWSER` names the Chromium binary; chromedriver comes from
//! `MUSTER_TEST_CHROMEDRIVER` (default `/usr/bin/chromedriver`). Unset, browser tests say so
//! loudly and return; set but unusable, they fail.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;

/// How long any one wait in a browser test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// One browser at a time: two Chromiums on a two-core machine make every wait flakier.
static ONE_BROWSER: Mutex<()> = Mutex::const_new(());

pub struct Browser {
    pub client: Client,
    name: String,
    _driver: Driver,
    _profile: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

/// chromedriver in a process group of its own, which holds every browser process it starts;
/// dropping it kills the group, so a failing test leaves no browser behind.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

pub fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/ui-screenshots"
    ));
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("address")
        .port()
}

impl Browser {
    /// A fresh browser for the test `name`, or `None` (with a loud message) when
    /// `MUSTER_TEST_BROWSER` is not set.
    pub async fn start(name: &str) -> Option<Browser> {
        let Some(chromium) = std::env::var_os("MUSTER_TEST_BROWSER").filter(|v| !v.is_empty())
        else {
            // Straight to stderr: the test harness captures `eprintln!` of passing tests, and
            // a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "*** SKIPPED: MUSTER_TEST_BROWSER is not set *** ({name} needs a browser)"
            );
            return None;
        };
        let chromium = PathBuf::from(chromium);
        assert!(
            chromium.exists(),
            "MUSTER_TEST_BROWSER={} does not exist",
            chromium.display()
        );
        let chromedriver = std::env::var_os("MUSTER_TEST_CHROMEDRIVER")
            .map(PathBuf::from)
            .or_else(|| {
                let beside = chromium.with_file_name("chromedriver");
                beside.exists().then_some(beside)
            })
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
        let turn = ONE_BROWSER.lock().await;
        let port = free_port();
        let driver = Driver(
            Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group, so that the browser it starts goes down with it.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display())),
        );
        let profile = tempfile::tempdir().expect("profile folder");
        let browser = Browser {
            client: connect(port, &chromium, &profile).await,
            name: name.to_owned(),
            _driver: driver,
            _profile: profile,
            _turn: turn,
        };
        browser
            .client
            .set_window_size(1280, 900)
            .await
            .expect("window size");
        Some(browser)
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("url")
            .path()
            .to_owned()
    }

    /// Saves a screenshot as `target/ui-screenshots/{name}.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Fails the test (after a screenshot of what the page showed) with `what`.
    async fn fail(&self, what: String) -> ! {
        let shot = self.screenshot(&format!("{}-failed", self.name)).await;
        panic!("{what} (screenshot: {})", shot.display());
    }

    /// Waits until the element at `css` exists and its text contains `needle`.
    pub async fn wait_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if text.contains(needle) {
                    return text;
                }
                last = text;
            }
            if Instant::now() >= deadline {
                self.fail(format!(
                    "waited {WAIT:?} for {css:?} to contain {needle:?}; last text: {last:?}"
                ))
                .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the page's path is `path`.
    pub async fn wait_path(&self, path: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let now = self.path().await;
            if now == path {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(format!("waited {WAIT:?} for {path}; still at {now}"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the script's event stream is connected (the live dot turns green).
    pub async fn wait_live(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let state = match self.client.find(Locator::Id("live-status")).await {
                Ok(dot) => dot.attr("data-state").await.ok().flatten(),
                Err(_) => None,
            };
            if state.as_deref() == Some("open") {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(format!(
                    "the live event stream did not connect within {WAIT:?} (state {state:?})"
                ))
                .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let field = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("field {css}: {e}"));
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("element {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Marks the current document; [`Browser::still_marked`] then tells whether the page was
    /// reloaded since (a reload makes a new document without the mark).
    pub async fn mark_document(&self) {
        self.client
            .execute("window.musterTestMark = 'unchanged'; return true;", vec![])
            .await
            .expect("mark the document");
    }

    pub async fn still_marked(&self) -> bool {
        self.client
            .execute("return window.musterTestMark === 'unchanged';", vec![])
            .await
            .expect("read the mark")
            .as_bool()
            .unwrap_or(false)
    }

    /// Ends the WebDriver session (the browser quits), then chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

async fn connect(port: u16, chromium: &std::path::Path, profile: &tempfile::TempDir) -> Client {
    let url = format!("http://127.0.0.1:{port}");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                // Chromium's own background connections are refused on a closed network and
                // slow every start; none of them matter to a test.
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    capabilities.insert("unhandledPromptBehavior".into(), json!("accept"));
    // chromedriver takes a moment to listen; once it does, a session either starts or the
    // browser is unusable.
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on port {port} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "MUSTER_TEST_BROWSER={} is set but the browser did not start: {e}",
                chromium.display()
            )
        })
}
