//! CPU time and memory of a watched process, read from /proc (Linux only).
//!
//! Read only at the edges of the measured window, never per request.

/// CPU time (utime + stime) of a process in clock ticks, from `/proc/PID/stat`.
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    parse_cpu_ticks(&text).ok_or_else(|| format!("unexpected /proc/{pid}/stat format"))
}

/// utime (field 14) + stime (field 15); the command name (field 2) may contain spaces, so
/// fields are counted after its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")": field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `Vm*` value of `/proc/PID/status` in KiB (e.g. `VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    parse_status_kib(&text, field).ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(field)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// Resets the peak RSS (`VmHWM`) of a process to its current RSS (`echo 5 > clear_refs`).
pub fn reset_peak_rss(pid: u32) -> Result<(), String> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(|e| format!("cannot reset peak RSS of {pid}: {e}"))
}

/// Sum of a value over a process and all its descendants (LiteLLM may fork workers).
pub fn tree_pids(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let stat = "1234 (tokio rt (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn parses_status() {
        let s = "Name:\tpalisade\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(s, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(s, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(s, "VmSwap"), None);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_ok());
        assert!(status_kib(me, "VmRSS").unwrap() > 0);
        assert!(tree_pids(me).contains(&me));
    }
}
