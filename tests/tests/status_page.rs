//! The manager's status page in a real browser: Debian's chromium driven over WebDriver
//! (chromedriver, through `fantoccini`), against a live manager of the worked example started
//! with the fleet harness. Each test has its own fleet, chromedriver and browser; all are
//! killed and reaped when it ends. The tests run one at a time (a lock): each starts seven
//! daemons and a browser on a small machine.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (`.ci/run` installs them).
//! `STATUS_PAGE_SCREENSHOT=FILE` makes the first test save a PNG of the page (how
//! `docs/status-page.png` was made).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tests::fleet::free_port;
use tests::worked_example::{self, CCM};
use tests::{wait_until, Fleet};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Bound of every wait on the page (loading, the fleet settling).
const SETTLE: Duration = Duration::from_secs(20);

/// chromedriver in a process group of its own: dropping it kills the group (chromedriver
/// and every browser process it started) and reaps chromedriver.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> anyhow::Result<Driver> {
        use std::os::unix::process::CommandExt;
        anyhow::ensure!(
            Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
            "{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install chromium chromium-driver (.ci/run does)"
        );
        let port = free_port()?;
        let profile = tempfile::Builder::new().prefix("chromium-").tempdir()?;
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("cannot start chromedriver")?;
        let driver = Driver {
            child,
            port,
            _profile: profile,
        };
        wait_until("chromedriver to listen", SETTLE, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await?;
        Ok(driver)
    }

    /// A headless browser session.
    async fn browser(&self) -> anyhow::Result<Client> {
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1400,1000", "--no-first-run", "--no-default-browser-check",
                    format!("--user-data-dir={}", self._profile.path().display()),
                ],
            }
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!("an object")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .context("cannot open a chromium session through chromedriver")?;
        Ok(client)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY-free: libc::kill on the process group this struct started.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The worked example with the status page on, every host of it (s2-host included) alive.
async fn fleet() -> anyhow::Result<Fleet> {
    let mut fleet = worked_example::fleet("300ms")
        .manager_http()
        .start()
        .await?;
    fleet.apply_topology(&worked_example::topology("300ms", true))?;
    Ok(fleet)
}

/// Waits until the page shows `css` with attribute `attr` equal to `want`.
async fn wait_attr(
    page: &Client,
    css: &str,
    attr: &str,
    want: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    wait_until(
        &format!("the page to show {css} with {attr}={want:?}"),
        deadline,
        || async {
            let found = page
                .find(Locator::Css(css))
                .await
                .map_err(|e| e.to_string())?;
            let got = found.attr(attr).await.map_err(|e| e.to_string())?;
            if got.as_deref() == Some(want) {
                Ok(())
            } else {
                Err(format!("{attr}={got:?}"))
            }
        },
    )
    .await
}

/// Clicks `css` once it is there. The page redraws what changed, so an element found just
/// before a redraw can go stale before the click: find it again then.
async fn click(page: &Client, css: &str) -> anyhow::Result<()> {
    wait_until(&format!("a click on {css}"), SETTLE, || async {
        let found = page
            .find(Locator::Css(css))
            .await
            .map_err(|e| e.to_string())?;
        found.click().await.map_err(|e| e.to_string())
    })
    .await
}

fn pkg_css(host: &str) -> String {
    format!(".pkg[data-host=\"{host}\"][data-type=\"{CCM}\"]")
}

/// The status of `host`'s command-control-manager in the live registry, read with the real
/// command line (`registry export --json`).
fn registry_status(fleet: &Fleet, host: &str) -> anyhow::Result<String> {
    let out = fleet.operator(&["registry", "export", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v["hosts"][host]["packages"][CCM]["status"]
        .as_str()
        .unwrap_or("none")
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_every_host_of_the_worked_example_with_its_route() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let fleet = fleet().await?;
    let driver = Driver::start().await?;
    let page = driver.browser().await?;
    let url = fleet
        .manager_http_url()
        .context("the manager serves HTTP")?;
    page.goto(&url).await?;
    for host in ["fm", "agent-1", "agent-2", "agent-3", "agent-4", "s2-host"] {
        wait_attr(
            &page,
            &format!(".host[data-host=\"{host}\"]"),
            "data-state",
            "alive",
            SETTLE,
        )
        .await?;
    }
    for host in ["fm", "agent-1", "agent-3", "s2-host"] {
        wait_attr(&page, &pkg_css(host), "data-status", "running", SETTLE).await?;
    }
    // The routes of the worked example, all managers up.
    for (host, manager) in [("agent-2", "agent-1"), ("agent-4", "agent-3")] {
        wait_attr(
            &page,
            &format!(".host[data-host=\"{host}\"] .route"),
            "data-routes-to",
            manager,
            SETTLE,
        )
        .await?;
    }
    // Who would move if agent-3 were lost: agent-4.
    let loss = page
        .find(Locator::Css(".loss[data-manager=\"agent-3\"]"))
        .await?
        .text()
        .await?;
    assert!(loss.contains("agent-4 → agent-1"), "{loss}");
    // The group of one: its member leads.
    let leader = page.find(Locator::Css("#leader")).await?.text().await?;
    assert!(!leader.is_empty() && leader != "none known", "{leader}");
    if let Ok(path) = std::env::var("STATUS_PAGE_SCREENSHOT") {
        std::fs::write(&path, page.screenshot().await?)?;
    }
    page.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_from_the_command_line_appears_within_two_seconds_without_a_reload(
) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let fleet = fleet().await?;
    let driver = Driver::start().await?;
    let page = driver.browser().await?;
    page.goto(&fleet.manager_http_url().context("HTTP port")?)
        .await?;
    wait_attr(&page, &pkg_css("agent-3"), "data-status", "running", SETTLE).await?;
    // A mark that a reload would wipe.
    page.execute("window.notReloaded = true;", vec![]).await?;

    fleet.operator(&["package", "drain", "--host", "agent-3", "--type", CCM])?;
    wait_attr(
        &page,
        &pkg_css("agent-3"),
        "data-status",
        "draining",
        Duration::from_secs(2),
    )
    .await?;
    let kept = page
        .execute("return window.notReloaded === true;", vec![])
        .await?;
    assert_eq!(kept, json!(true), "the page was reloaded");
    // And the routes follow: agent-4 now routes to agent-1.
    wait_attr(
        &page,
        ".host[data-host=\"agent-4\"] .route",
        "data-routes-to",
        "agent-1",
        SETTLE,
    )
    .await?;
    page.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_button_asks_with_the_blast_radius_and_drains() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let fleet = fleet().await?;
    let driver = Driver::start().await?;
    let page = driver.browser().await?;
    page.goto(&fleet.manager_http_url().context("HTTP port")?)
        .await?;
    wait_attr(&page, &pkg_css("agent-3"), "data-status", "running", SETTLE).await?;
    wait_attr(&page, "body", "data-admin", "yes", SETTLE).await?;

    let button =
        format!("button[data-action=\"drain\"][data-host=\"agent-3\"][data-type=\"{CCM}\"]");
    click(&page, &button).await?;
    // The confirmation names who would move: agent-3 and agent-4, both to agent-1.
    let radius = page
        .wait()
        .at_most(SETTLE)
        .for_element(Locator::Css("#confirm[open] #blast-radius"))
        .await?;
    assert_eq!(radius.attr("data-moves").await?.as_deref(), Some("2"));
    let body = page
        .find(Locator::Css("#confirm-body"))
        .await?
        .text()
        .await?;
    assert!(body.contains("agent-4: agent-3 → agent-1"), "{body}");
    assert!(body.contains("agent-3: agent-3 → agent-1"), "{body}");
    // Nothing is written before the confirmation.
    assert_eq!(registry_status(&fleet, "agent-3")?, "running");
    page.find(Locator::Css("#confirm-ok"))
        .await?
        .click()
        .await?;

    wait_until(
        "the registry to show agent-3's package drained (registry export)",
        SETTLE,
        || async {
            registry_status(&fleet, "agent-3")
                .map_err(|e| e.to_string())
                .and_then(|s| if s == "draining" { Ok(()) } else { Err(s) })
        },
    )
    .await?;
    wait_attr(
        &page,
        &pkg_css("agent-3"),
        "data-status",
        "draining",
        SETTLE,
    )
    .await?;
    // The write is logged with who made it.
    let logs = fleet.logs_all();
    assert!(
        logs.contains("admin write") && logs.contains("local-http"),
        "no admin write logged for local-http:\n{logs}"
    );
    page.close().await?;
    Ok(())
}

/// Waits until the page's `#leader` shows a name that `want` accepts; returns it.
async fn wait_leader_shown(
    page: &Client,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    wait_until(what, SETTLE, || async {
        let text = page
            .find(Locator::Css("#leader"))
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        if want(&text) {
            Ok(text)
        } else {
            Err(format!("leader shown: {text:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_fails_over_on_the_page_and_the_move_leadership_button_moves_it(
) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut fleet = worked_example::fleet("300ms")
        .managers(3)
        .manager_http()
        .start()
        .await?;
    let driver = Driver::start().await?;
    let page = driver.browser().await?;
    // The page is open on a member that stays up; leadership moves to the third one. A loaded
    // machine may hold an election while the browser starts: the members are chosen again
    // from the leader the group then agrees on, until the page shows the same one.
    let mut attempt = 0;
    let (leader, target, target_name) = loop {
        let leader = fleet.wait_leader(None, SETTLE).await?;
        let viewer = (0..3).find(|i| *i != leader).expect("three members");
        let target = (0..3)
            .find(|i| *i != leader && *i != viewer)
            .expect("three members");
        let (leader_name, target_name) = (
            fleet.member_name(leader).to_owned(),
            fleet.member_name(target).to_owned(),
        );
        page.goto(&fleet.member_http_url(viewer).context("HTTP port")?)
            .await?;
        let shown =
            wait_leader_shown(&page, "the first leader on the page", |l| l == leader_name).await;
        match shown {
            Ok(_) => break (leader, target, target_name),
            Err(e) if attempt < 2 && fleet.wait_leader(None, SETTLE).await? != leader => {
                attempt += 1;
                eprintln!("leadership moved while the page opened ({e:#}); choosing again");
            }
            Err(e) => return Err(e),
        }
    };
    for i in 0..3 {
        let css = format!("tr[data-member=\"{}\"]", fleet.member_name(i));
        let role = if i == leader { "leader" } else { "follower" };
        wait_attr(&page, &css, "data-role", role, SETTLE).await?;
    }
    page.execute("window.notReloaded = true;", vec![]).await?;

    // The button, confirmed: leadership moves to the chosen member.
    wait_attr(&page, "body", "data-admin", "yes", SETTLE).await?;
    wait_until("the leadership choice", SETTLE, || async {
        let sel = page
            .find(Locator::Css("#failover-to"))
            .await
            .map_err(|e| e.to_string())?;
        sel.select_by_value(&target_name)
            .await
            .map_err(|e| e.to_string())
    })
    .await?;
    click(&page, "#failover").await?;
    let radius = page
        .wait()
        .at_most(SETTLE)
        .for_element(Locator::Css("#confirm[open] #blast-radius"))
        .await?;
    assert_eq!(radius.attr("data-moves").await?.as_deref(), Some("0"));
    let body = page
        .find(Locator::Css("#confirm-body"))
        .await?
        .text()
        .await?;
    assert!(body.contains(&target_name), "{body}");
    click(&page, "#confirm-ok").await?;
    let moved = fleet.wait_leader(Some(leader), SETTLE).await?;
    assert_eq!(
        moved, target,
        "the group's leader (ha status) after the button"
    );
    wait_leader_shown(&page, "the moved leader on the page", |l| l == target_name).await?;

    // The new leader is lost: the page shows the failover by itself.
    fleet.members()[target].proc.kill();
    let after = wait_leader_shown(&page, "a leader elected after the loss", |l| {
        l != target_name && l != "none known" && !l.is_empty()
    })
    .await?;
    wait_attr(
        &page,
        &format!("tr[data-member=\"{target_name}\"]"),
        "data-role",
        "unreachable",
        SETTLE,
    )
    .await?;
    wait_attr(
        &page,
        &format!("tr[data-member=\"{after}\"]"),
        "data-role",
        "leader",
        SETTLE,
    )
    .await?;
    let kept = page
        .execute("return window.notReloaded === true;", vec![])
        .await?;
    assert_eq!(kept, json!(true), "the page was reloaded");
    page.close().await?;
    Ok(())
}
