//! Real clients of an agent's web server for the web view's tests: `curl` for HTTP(S)
//! GETs, a raw TCP socket for requests no client would send, and headless Chromium
//! (Debian's `chromium`, installed by scripts/test) for the page as a browser renders it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// An HTTP answer: status code and body.
#[derive(Debug)]
pub struct Answer {
    pub code: u16,
    pub body: String,
}

/// `GET url` with curl and `extra` arguments; `Err` with curl's message when no HTTP
/// answer came (refused TLS, connection cut).
pub fn curl(url: &str, extra: &[&str]) -> Result<Answer, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "curl exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let (body, code) = text.rsplit_once('\n').ok_or("no status line from curl")?;
    Ok(Answer {
        code: code
            .trim()
            .parse()
            .map_err(|_| format!("status {code:?}"))?,
        body: body.to_owned(),
    })
}

/// `GET http://addr/path` that must answer 200; the body as JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let a = curl(&format!("http://{addr}{path}"), &[]).expect("GET");
    assert_eq!(a.code, 200, "GET {path}: {}", a.body);
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", a.body))
}

/// Sends `bytes` on a fresh connection to `addr`, then reads until the server closes
/// it or `bound` passes; returns what was read and how long until the close (`None`:
/// still open at `bound`).
pub fn raw(addr: SocketAddr, bytes: &[u8], bound: Duration) -> (String, Option<Duration>) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    // The server may close while we still write (it refused the head already).
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < bound {
        match s.read(&mut buf) {
            Ok(0) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    Some(start.elapsed()),
                )
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    Some(start.elapsed()),
                )
            }
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), None)
}

/// The Chromium binary; the test fails (never skips) when it is missing: CI installs it.
fn chromium() -> &'static str {
    let ok = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "chromium is not installed: run scripts/test (it installs Debian's `chromium`) or \
         `apt-get install --no-install-recommends chromium`"
    );
    "chromium"
}

fn headless(profile: &Path) -> Command {
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--mute-audio",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// Runs Chromium headless with `args` and `url`; its standard output.
fn run_headless(profile: &Path, args: &[String], url: &str) -> String {
    let out = headless(profile)
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM of `url` after its scripts ran for `budget_ms` of virtual time.
pub fn dump_dom(url: &str, profile: &Path, budget_ms: u32) -> String {
    let args = [
        format!("--virtual-time-budget={budget_ms}"),
        "--dump-dom".to_owned(),
    ];
    run_headless(profile, &args, url)
}

/// A PNG of `url` as a 1280×`height` window shows it, written to `file`.
pub fn screenshot(url: &str, profile: &Path, file: &Path, height: u32) {
    let args = [
        "--virtual-time-budget=4000".to_owned(),
        format!("--window-size=1280,{height}"),
        format!("--screenshot={}", file.display()),
    ];
    run_headless(profile, &args, url);
}

/// One host as the page draws it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostShown {
    pub node: String,
    pub state: String,
    pub load: f64,
    pub vms: u32,
}

/// The value of attribute `name` in the start tag `tag`.
fn attr(tag: &str, name: &str) -> Option<String> {
    let from = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[from..].find('"')?;
    Some(tag[from..from + len].to_owned())
}

/// The start tags in `dom` that begin with `prefix` (e.g. `<div class="host"`).
fn tags<'a>(dom: &'a str, prefix: &str) -> Vec<&'a str> {
    dom.match_indices(prefix)
        .filter_map(|(i, _)| dom[i..].find('>').map(|end| &dom[i..i + end]))
        .collect()
}

/// The hosts the page shows.
pub fn hosts_shown(dom: &str) -> Vec<HostShown> {
    tags(dom, "<div class=\"host\"")
        .into_iter()
        .map(|t| HostShown {
            node: attr(t, "data-node").expect("data-node"),
            state: attr(t, "data-state").expect("data-state"),
            load: attr(t, "data-load")
                .expect("data-load")
                .parse()
                .expect("load"),
            vms: attr(t, "data-vms").expect("data-vms").parse().expect("vms"),
        })
        .collect()
}

/// The session rows the page shows.
pub fn sessions_shown(dom: &str) -> usize {
    tags(dom, "<tr class=\"session\"").len()
}

/// The points of the chart's `max` line.
pub fn chart_points(dom: &str) -> usize {
    tags(dom, "<polyline class=\"max\"")
        .first()
        .and_then(|t| attr(t, "data-points"))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}
