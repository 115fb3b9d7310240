//! The dashboard in a real browser: Debian's chromium, driven through
//! chromedriver (WebDriver, fantoccini), against a controller with two
//! hosts. A viewer signs in with a token, reads the hosts, follows a
//! rollout batch by batch without reloading the page, reads the app's
//! releases and history, the audit log and the live event feed, and is
//! signed out when the token is revoked.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::harness::free_addr;
use crate::releases::assert_success;
use crate::rollouts::{rollout_id, Cluster, APP};

/// chromedriver, listening on loopback; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(dir: &Path) -> Driver {
        let bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap_or_else(|| {
                panic!("chromedriver is missing: install chromium and chromium-driver (tests/deps.sh does)")
            });
        assert!(
            Path::new("/usr/bin/chromium").is_file(),
            "chromium is missing: install chromium (tests/deps.sh does)"
        );
        let addr = free_addr();
        let log = std::fs::File::create(dir.join("chromedriver.log")).expect("driver log");
        let child = Command::new(bin)
            .arg(format!("--port={}", addr.port()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {addr} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver {
            child,
            url: format!("http://{addr}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    // The controller's certificate comes from the fleet's own CA, which
    // this browser does not know (an operator's browser would be told to
    // trust it).
    caps.insert("acceptInsecureCerts".into(), json!(true));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Polls `probe` until it gives a value, or fails naming `what`.
async fn eventually<T>(what: &str, secs: u64, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} not seen within {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

async fn path(c: &Client) -> String {
    c.current_url().await.expect("url").path().to_string()
}

/// Types `token` into the sign-in form and submits it.
async fn sign_in(c: &Client, token: &str) {
    c.find(Locator::Css("#token"))
        .await
        .expect("token field")
        .send_keys(token)
        .await
        .expect("type");
    c.find(Locator::Css("#sign-in"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
}

/// The marker a page keeps until it is loaded again.
async fn marker(c: &Client) -> serde_json::Value {
    c.execute("return window.fleetTestMarker || null;", vec![])
        .await
        .expect("script")
}

#[test]
fn a_viewer_follows_the_fleet_and_a_rollout_live_in_a_real_browser() {
    let c = Cluster::start(2);
    c.push("1.0.0", &[]);
    assert_success(
        &c.rollout(&["--release", "1.0.0", "--batch", "100%", "--wait"]),
        "rollout 1.0.0",
    );
    let f = &c.fleet;
    assert_success(
        &f.fleetctl(&["operator", "create", "watcher", "--role", "viewer"]),
        "create viewer",
    );
    let token = f.fleetctl_json(&["operator", "token", "create", "watcher", "--ttl", "1h"]);
    let secret = token["secret"].as_str().expect("secret").to_string();
    let token_id = token["id"].as_str().expect("token id").to_string();
    let base = format!("https://127.0.0.1:{}/ui", f.controller.addr.port());
    let dir = f.root.path().to_path_buf();
    let driver = Driver::start(&dir);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let b = browser(&driver, &dir.join("chromium-profile")).await;
        b.set_window_size(1280, 720).await.expect("window size");

        // Not signed in: the sign-in page. A wrong token says so.
        b.goto(&format!("{base}/hosts")).await.expect("goto");
        assert_eq!(path(&b).await, "/ui/login");
        sign_in(&b, "fleet_op_000000000000.nope").await;
        let error = eventually("the sign-in error", 10, async || text(&b, "#login-error").await).await;
        assert!(error.contains("not valid"), "{error}");

        // Signed in as the viewer: every host, its status and what it runs.
        sign_in(&b, &secret).await;
        eventually("the hosts page", 10, async || {
            (path(&b).await == "/ui/hosts").then_some(())
        })
        .await;
        let summary = text(&b, "#hosts-summary").await.expect("summary");
        assert_eq!(summary, "2 hosts, 2 connected");
        let hosts = text(&b, "#hosts").await.expect("hosts table");
        for name in ["app-1", "app-2"] {
            assert!(hosts.contains(name), "{hosts}");
        }
        assert_eq!(hosts.matches("demo 1.0.0").count(), 2, "{hosts}");
        assert!(text(&b, "nav .who").await.expect("who").contains("watcher (viewer)"));

        // A rollout followed live: the page is loaded once, and shows each
        // batch, the hosts' phases and the end as they happen.
        c.push_slow("2.0.0", 3);
        let started = c.rollout(&["--release", "2.0.0", "--batch", "1", "--output", "json"]);
        assert_success(&started, "rollout 2.0.0");
        let id = rollout_id(&started);
        b.goto(&format!("{base}/rollouts/{id}")).await.expect("goto rollout");
        b.execute("window.fleetTestMarker = 42;", vec![]).await.expect("marker");
        let phase = eventually("a host in a phase", 30, async || {
            let p = text(&b, "td.phase").await?;
            (!p.is_empty()).then_some(p)
        })
        .await;
        assert!(!phase.is_empty());
        eventually("the first host done", 60, async || {
            (text(&b, "#rollout-progress").await? == "1 of 2 hosts done").then_some(())
        })
        .await;
        // README's picture of the dashboard is this page at this moment:
        // `FLEET_DASHBOARD_SCREENSHOT=docs/dashboard.png` saves it.
        if let Ok(to) = std::env::var("FLEET_DASHBOARD_SCREENSHOT") {
            let png = b.screenshot().await.expect("screenshot");
            std::fs::write(&to, png).expect("write the screenshot");
        }
        eventually("the rollout's end", 60, async || {
            (text(&b, "#rollout-state").await? == "succeeded").then_some(())
        })
        .await;
        assert_eq!(
            text(&b, "#rollout-progress").await.as_deref(),
            Some("2 of 2 hosts done")
        );
        let batches = text(&b, "#main").await.expect("main");
        assert!(
            batches.contains("Batch 1 of 2 — done") && batches.contains("Batch 2 of 2 — done"),
            "{batches}"
        );
        assert!(batches.contains("pre_activate"), "each host's timeline: {batches}");
        assert_eq!(marker(&b).await, json!(42), "the page updated without a reload");

        // The app: its hosts, releases and history.
        b.goto(&format!("{base}/apps/{APP}")).await.expect("goto app");
        let releases = text(&b, "#releases").await.expect("releases");
        assert!(releases.contains("1.0.0") && releases.contains("2.0.0"), "{releases}");
        let history = text(&b, "#rollouts").await.expect("history");
        assert!(history.contains(&id), "{history}");
        let app_hosts = text(&b, "#app-hosts").await.expect("app hosts");
        assert_eq!(
            app_hosts.matches("2.0.0").count(),
            4,
            "should run and runs, on both: {app_hosts}"
        );

        // The audit log names who started the rollout.
        b.goto(&format!("{base}/audit")).await.expect("goto audit");
        let audit = text(&b, "#audit").await.expect("audit");
        assert!(
            audit.contains("RolloutService/StartRollout") && audit.contains("admin"),
            "{audit}"
        );

        // The event feed grows as things happen, without a reload.
        b.goto(&format!("{base}/events")).await.expect("goto events");
        b.execute("window.fleetTestMarker = 7;", vec![]).await.expect("marker");
        // Let the page's stream open before the event happens.
        eventually("the live stream", 10, async || {
            let v = b
                .execute("return document.getElementById('main').dataset.live;", vec![])
                .await
                .ok()?;
            (v == json!("/ui/sse/events")).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.push("3.0.0", &[]);
        let top = eventually("the new event on top", 20, async || {
            let row = b.find(Locator::Css("#events tbody tr")).await.ok()?;
            let kind = row.attr("data-kind").await.ok()??;
            (kind == "release_pushed").then_some(row.text().await.ok()?)
        })
        .await;
        assert!(top.contains("3.0.0"), "{top}");
        assert_eq!(marker(&b).await, json!(7), "the feed grew without a reload");

        // A revoked token is out at its next page.
        assert_success(&f.fleetctl(&["operator", "token", "revoke", &token_id]), "revoke");
        b.goto(&format!("{base}/hosts")).await.expect("goto");
        assert_eq!(path(&b).await, "/ui/login");
        b.close().await.expect("close the browser");
    });
}

#[test]
fn a_rollout_page_open_on_a_follower_goes_on_to_the_end_when_the_serving_controller_dies() {
    use crate::etcd_store::{init_args, strs, Etcd};
    let etcd = Etcd::cluster(1);
    let args = init_args(&etcd, "fleet/dashboard/");
    let mut fleet = crate::harness::Fleet::controller_only_with(&strs(&args), &[], "info");
    let root = fleet.root.path().to_path_buf();
    let mut b = fleet.controller.join(&root, "controller-b", &strs(&args), &[]);
    b.spawn();
    crate::ha::wait_following(&b);
    crate::ha::fleetctl_knows(&fleet, &format!("{},{}", fleet.controller.addr, b.addr));
    // The hosts and the browser know b only: everything they do goes
    // through the follower, then to b when it serves.
    fleet.agent_controllers = Some(b.addr.to_string());
    let mut c = Cluster::on_fleet(fleet, &[""; 2], "info");
    c.push("1.0.0", &[]);
    assert_success(
        &c.rollout(&["--release", "1.0.0", "--batch", "100%", "--wait"]),
        "rollout 1.0.0",
    );
    let token = c
        .fleet
        .fleetctl_json(&["operator", "token", "create", "admin", "--ttl", "1h"]);
    let secret = token["secret"].as_str().expect("secret").to_string();
    let base = format!("https://127.0.0.1:{}/ui", b.addr.port());
    let driver = Driver::start(&root);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let br = browser(&driver, &root.join("chromium-profile")).await;
        br.goto(&format!("{base}/hosts")).await.expect("goto");
        sign_in(&br, &secret).await;
        eventually("the hosts page, through the follower", 10, async || {
            (path(&br).await == "/ui/hosts").then_some(())
        })
        .await;
        assert_eq!(
            text(&br, "#hosts-summary").await.as_deref(),
            Some("2 hosts, 2 connected")
        );

        c.push_slow("2.0.0", 4);
        let started = c.rollout(&["--release", "2.0.0", "--batch", "1", "--output", "json"]);
        assert_success(&started, "rollout 2.0.0");
        let id = rollout_id(&started);
        br.goto(&format!("{base}/rollouts/{id}")).await.expect("goto rollout");
        br.execute("window.fleetTestMarker = 42;", vec![])
            .await
            .expect("marker");
        eventually("a host in a phase", 30, async || {
            let p = text(&br, "td.phase").await?;
            (!p.is_empty()).then_some(p)
        })
        .await;

        // The serving controller dies mid-rollout; b takes over.
        c.fleet.controller.kill9();
        eventually("the rollout's end, on the page opened before", 120, async || {
            (text(&br, "#rollout-state").await? == "succeeded").then_some(())
        })
        .await;
        assert_eq!(
            text(&br, "#rollout-progress").await.as_deref(),
            Some("2 of 2 hosts done")
        );
        assert_eq!(marker(&br).await, json!(42), "the page went on without a reload");
        assert!(
            b.log_text().contains("fleet-controller serving"),
            "b serves now: {}",
            b.log_text()
        );
        br.close().await.expect("close the browser");
    });
    c.wait_all_serve("2.0.0");
    b.kill9();
}
