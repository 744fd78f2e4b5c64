//! The measured server's resident memory and CPU time, read from /proc.

/// /proc reports CPU time in USER_HZ ticks, which Linux fixes at 100 for user space.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rss_kb: u64,
    pub cpu_seconds: f64,
}

/// Memory and CPU time now: the summed figures of the given processes (the nodes of a cluster); None if there are none
/// or one cannot be read.
pub fn sample(pids: &[u32]) -> Option<Sample> {
    let mut total = Sample::default();
    for &pid in pids {
        let s = sample_one(pid)?;
        total.rss_kb += s.rss_kb;
        total.cpu_seconds += s.cpu_seconds;
    }
    (!pids.is_empty()).then_some(total)
}

fn sample_one(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields after it are fixed.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Sample {
        rss_kb,
        cpu_seconds: (utime + stime) / USER_HZ,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_our_own_process() {
        let s = super::sample(&[std::process::id()]).unwrap();
        assert!(s.rss_kb > 0);
        assert!(s.cpu_seconds >= 0.0);
    }
}
