//! Host facts (what a host is) and metrics (how it is doing), from sysinfo.
//!
//! The agent must stay small (target: 10 MiB resident when idle), so the one
//! [`Sampler`] refreshes only what a heartbeat reports: never the process
//! table, only the agent's own process.

use std::path::{Path, PathBuf};

use fleet_proto::{HostFacts, HostMetrics};
use sysinfo::{
    CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System,
};

/// Samples facts and metrics; kept alive across heartbeats because CPU use
/// is the difference between two samples.
pub struct Sampler {
    sys: System,
    disks: Disks,
    pid: Option<Pid>,
    state_dir: PathBuf,
    hostname: Option<String>,
}

impl Sampler {
    /// A sampler reporting the disk that holds `state_dir`, and `hostname`
    /// instead of the kernel's when given.
    pub fn new(state_dir: &Path, hostname: Option<String>) -> Sampler {
        let mut sys = System::new();
        // The first CPU sample: the next heartbeat's cpu_percent is measured
        // against it.
        sys.refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
        sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        // Canonical, so the mount point prefix match sees through symlinks.
        let state_dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        Sampler {
            sys,
            disks: Disks::new(),
            pid: sysinfo::get_current_pid().ok(),
            state_dir,
            hostname,
        }
    }

    /// The host's name: the configured override, else the kernel's.
    pub fn hostname(&self) -> String {
        self.hostname.clone().or_else(System::host_name).unwrap_or_default()
    }

    /// Facts for hello and enrollment.
    pub fn facts(&self) -> HostFacts {
        HostFacts {
            hostname: self.hostname(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            os: System::long_os_version().unwrap_or_default(),
            kernel: System::kernel_version().unwrap_or_default(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            cpus: u32::try_from(self.sys.cpus().len()).unwrap_or(u32::MAX),
            memory_total_bytes: self.sys.total_memory(),
        }
    }

    /// Metrics for a heartbeat.
    pub fn sample(&mut self) -> HostMetrics {
        self.sys
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
        self.sys
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        // Re-reads the mount table too, so a newly mounted state dir is seen.
        self.disks
            .refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        let (disk_free_bytes, disk_total_bytes) = disk_for(
            self.disks
                .list()
                .iter()
                .map(|d| (d.mount_point(), d.available_space(), d.total_space())),
            &self.state_dir,
        )
        .unwrap_or_default();
        let agent_rss_bytes = self.pid.map_or(0, |pid| {
            self.sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                true,
                ProcessRefreshKind::nothing().with_memory(),
            );
            self.sys.process(pid).map_or(0, |p| p.memory())
        });
        let load = System::load_average();
        HostMetrics {
            load1: load.one,
            load5: load.five,
            load15: load.fifteen,
            cpu_percent: f64::from(self.sys.global_cpu_usage()),
            memory_used_bytes: self.sys.used_memory(),
            memory_total_bytes: self.sys.total_memory(),
            disk_free_bytes,
            disk_total_bytes,
            uptime_secs: System::uptime(),
            agent_rss_bytes,
        }
    }
}

/// (free, total) of the file system whose mount point is the longest prefix
/// of `dir`, from `(mount point, free, total)` entries.
fn disk_for<'a>(disks: impl Iterator<Item = (&'a Path, u64, u64)>, dir: &Path) -> Option<(u64, u64)> {
    disks
        .filter(|(mount, _, _)| dir.starts_with(mount))
        .max_by_key(|(mount, _, _)| mount.components().count())
        .map(|(_, free, total)| (free, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_is_the_longest_mount_prefix() {
        let disks = [
            (Path::new("/"), 1, 10),
            (Path::new("/var"), 2, 20),
            (Path::new("/var/lib/fleet"), 3, 30),
            (Path::new("/var/li"), 4, 40),
        ];
        let pick = |dir: &str| disk_for(disks.iter().copied(), Path::new(dir));
        assert_eq!(pick("/var/lib/fleet-agent"), Some((2, 20)));
        assert_eq!(pick("/var/lib/fleet/x"), Some((3, 30)));
        assert_eq!(pick("/srv"), Some((1, 10)));
        assert_eq!(disk_for(std::iter::empty(), Path::new("/srv")), None);
    }

    #[test]
    fn sampler_reports_this_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Sampler::new(dir.path(), Some("web-1".into()));
        let facts = s.facts();
        assert_eq!(facts.hostname, "web-1");
        assert!(facts.cpus > 0);
        assert!(facts.memory_total_bytes > 0);
        let m = s.sample();
        assert!(m.memory_total_bytes > 0);
        assert!(m.agent_rss_bytes > 0);
        assert!((0.0..=100.0).contains(&m.cpu_percent));
    }
}
