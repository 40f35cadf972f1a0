//! What the benchmarks share: finding programs and ports, CPU, memory and
//! file-descriptor readings from /proc, medians, the revision a result comes
//! from, and where results are written.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use hyper::header::HeaderValue;
use serde_json::json;

/// The release `connectors` binary cargo built for this bench.
pub fn connectors_binary() -> PathBuf {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_connectors"));
    if !binary.components().any(|c| c.as_os_str() == "release") {
        eprintln!(
            "warning: {} is not a release build; run it with `cargo bench`",
            binary.display()
        );
    }
    binary
}

/// The `connectors` binary under benchmark, listening at `addr` (the
/// launcher is `testing::process`, shared with the tests).
pub struct Connectors {
    process: testing::process::Connectors,
    /// The `addr` of the log line the start waited for.
    pub addr: SocketAddr,
}

impl Connectors {
    /// Runs `binary args` and waits (bounded) for the log line
    /// `ready_message`, which must name the address.
    pub fn start(binary: &Path, args: &[&OsStr], ready_message: &'static str) -> anyhow::Result<Self> {
        let process = testing::process::Connectors::start(binary, args, &[], ready_message)?;
        let addr = process
            .addr()
            .with_context(|| format!("the line {ready_message:?} names no address"))?;
        Ok(Self { process, addr })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Every log line (JSON) the process wrote so far.
    pub fn logs(&self) -> Vec<String> {
        self.process.logs()
    }
}

/// `name` on `PATH`, or in the sbin directories a non-root `PATH` may lack.
pub fn find_program(name: &str) -> anyhow::Result<PathBuf> {
    Ok(testing::program::find(name)?)
}

/// `Basic` credentials as a header value.
pub fn basic(user: &str, password: &str) -> HeaderValue {
    HeaderValue::from_str(&testing::credentials::basic(user, password)).expect("base64 is a valid header value")
}

/// Writes `report` to `bench/results/<file>` and returns its path.
pub fn write_results(file: &str, report: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results").join(file);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("bench/results");
    std::fs::write(&path, report).expect("write the results");
    path
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

// ---- /proc readings ----

/// The fields of /proc/<pid>/stat after the command name: index 0 is the
/// state (field 3), 1 the parent pid, 11 and 12 utime and stime.
pub fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    Some(after_name.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
}

pub fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|name| name.trim().to_owned())
}

pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat_fields(&pid.to_string()).is_some_and(|f| f.get(1) == Some(&u64::from(parent))))
        .collect()
}

/// Clock ticks per second of /proc times (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User plus system CPU seconds the processes used so far.
pub fn cpu_seconds(pids: &[String]) -> f64 {
    let (user, system) = cpu_split(pids);
    user + system
}

/// User and system (kernel) CPU seconds the processes used so far.
pub fn cpu_split(pids: &[String]) -> (f64, f64) {
    let (user, system) = pids
        .iter()
        .filter_map(|pid| stat_fields(pid))
        .map(|f| (f.get(11).copied().unwrap_or(0), f.get(12).copied().unwrap_or(0)))
        .fold((0, 0), |a, t| (a.0 + t.0, a.1 + t.1));
    (user as f64 / clock_ticks(), system as f64 / clock_ticks())
}

/// Non-idle CPU seconds of the whole machine so far (/proc/stat).
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user)
    let busy: u64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy as f64 / clock_ticks()
}

/// The soft open-file limit of a process (`self` or a pid).
pub fn fd_limit(pid: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How many file descriptors a process has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// Resets the process's VmHWM to its current RSS (Linux 4.0+), so the next
/// reading is this phase's peak. False when the kernel refused.
pub fn reset_high_water(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// (VmHWM, VmRSS) in bytes.
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

/// The product's crates: a result depends on any of them.
const PRODUCT: [&str; 10] = [
    "src",
    "proxy",
    "access",
    "connector",
    "registry",
    "webhook",
    "certs",
    "serving",
    "csi",
    "controller",
];

/// The commit a result comes from, and whether the product's sources were
/// clean.
pub fn revision() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            // NB: only the end is trimmed: a porcelain line starts with
            // its two status columns, the first often a space.
            .map(|o| String::from_utf8_lossy(&o.stdout).trim_end().to_owned())
    };
    let mut status = vec!["status", "--porcelain", "--"];
    status.extend(PRODUCT);
    match git(&["rev-parse", "--short", "HEAD"]) {
        None => "an unknown commit".to_owned(),
        Some(commit) => match git(&status) {
            Some(changes) if changes.is_empty() => format!("commit `{commit}` (clean product sources)"),
            Some(changes) => {
                let mut dirs: Vec<&str> = changes
                    .lines()
                    .filter_map(|line| line.get(3..)?.split('/').next())
                    .collect();
                dirs.sort_unstable();
                dirs.dedup();
                format!("commit `{commit}` with uncommitted changes in {}", dirs.join(", "))
            }
            None => format!("commit `{commit}`"),
        },
    }
}

/// The first line a program prints about its version.
pub fn program_version(name: &str, args: &[&str]) -> String {
    find_program(name)
        .ok()
        .and_then(|p| Command::new(p).args(args).output().ok())
        .map(|o| {
            let text = String::from_utf8_lossy(if o.stdout.is_empty() { &o.stderr } else { &o.stdout }).into_owned();
            text.lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_else(|| "(unknown version)".to_owned())
}

// ---- Admission ----

/// A realistic 5-container pod: 1 init container, 4 containers, existing env,
/// mounts and volumes, images on the connectors' and other registries.
pub fn five_container_pod() -> serde_json::Value {
    let container = |name: &str, image: &str| {
        json!({
            "name": name,
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", "exec server --port=8080"],
            "env": [{"name": "MODE", "value": "prod"}, {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "ports": [{"containerPort": 8080, "name": "http"}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false},
        })
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-7d9f8b-", "namespace": "team", "labels": {"app": "web"}, "annotations": {"prometheus.io/scrape": "true"}},
        "spec": {
            "initContainers": [container("migrate", "harbor.example.com/team/migrate:v2")],
            "containers": [
                container("app", "harbor.example.com/team/app:v1.4.2@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
                container("sidecar", "busybox:1.36"),
                container("exporter", "quay.io/prometheus/node-exporter:v1.8.0"),
                container("proxy", "docker.io/envoyproxy/envoy:v1.30.1"),
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
            "serviceAccountName": "web",
            "restartPolicy": "Always",
        }
    })
}

/// The injection settings of an install with an interception CA.
pub fn injection_config() -> connector::injection::InjectionConfig {
    let mut config =
        connector::injection::InjectionConfig::new("10.96.0.50", "connectors-proxy.connectors-system.svc:3128");
    config.proxy_ca_pem = Some(
        certs::CertificateAuthority::generate("bench CA", std::time::Duration::from_secs(3600))
            .unwrap()
            .cert_pem()
            .to_owned(),
    );
    config
}

/// Runs `op` in a loop on this thread for `duration`; per-op latency in ns.
pub fn single_core(duration: std::time::Duration, mut op: impl FnMut()) -> (f64, hdrhistogram::Histogram<u64>) {
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for _ in 0..1000 {
        op();
    }
    let started = std::time::Instant::now();
    let mut count = 0u64;
    while started.elapsed() < duration {
        let t = std::time::Instant::now();
        op();
        histogram.record(t.elapsed().as_nanos() as u64).unwrap();
        count += 1;
    }
    (count as f64 / started.elapsed().as_secs_f64(), histogram)
}

/// How many failures a report quotes.
pub const QUOTED_ERRORS: usize = 10;

/// The machine a result comes from: cores, CPU model, memory, kernel.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / (1u64 << 20) as f64)
        .unwrap_or(f64::NAN);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({model}), {memory_gib:.0} GiB, Linux {}", kernel.trim())
}

/// Now, in UTC to the minute (`date -u`).
pub fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "an unknown date".to_owned())
}

/// Failures of a run, shared by its workers: each is printed, counted,
/// and the first [`QUOTED_ERRORS`] kept for the report.
#[derive(Default)]
pub struct ErrorLog(std::sync::Mutex<Failures>);

/// A failure count and the first few failures.
#[derive(Clone, Default)]
pub struct Failures {
    pub count: u64,
    pub first: Vec<String>,
}

impl ErrorLog {
    pub fn record(&self, message: String) {
        eprintln!("error: {message}");
        let mut failures = self.0.lock().unwrap_or_else(|e| e.into_inner());
        failures.count += 1;
        if failures.first.len() < QUOTED_ERRORS {
            failures.first.push(message);
        }
    }

    pub fn snapshot(&self) -> Failures {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn count(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).count
    }
}
