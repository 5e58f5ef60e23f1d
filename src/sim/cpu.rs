//! CPU time (user + system) of this process and of a child process, for the bench's figures per
//! story.

use std::time::Duration;

/// This process's CPU time so far.
pub fn own() -> Option<Duration> {
    crate::endpoints::process_cpu()
}

/// The CPU time of process `pid` so far, from `/proc/<pid>/stat` (Linux).
pub fn of_process(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    parse_stat(&stat, u64::try_from(ticks).ok()?)
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in clock ticks of `ticks_per_sec`. The process
/// name (field 2) may hold spaces and parentheses: the fields are counted after its last `)`.
fn parse_stat(stat: &str, ticks_per_sec: u64) -> Option<Duration> {
    if ticks_per_sec == 0 {
        return None;
    }
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // Field 3 (state) is the first after the name; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    Some(Duration::from_millis(
        ticks.checked_mul(1000)? / ticks_per_sec,
    ))
}

/// CPU time per story, in milliseconds: `used` over `stories`; `None` without either.
pub fn ms_per_story(used: Option<Duration>, stories: u64) -> Option<f64> {
    let used = used?;
    (stories > 0).then(|| used.as_secs_f64() * 1000.0 / stories as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_user_plus_system_time() {
        let line = "4242 (nats (x) srv) S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 125 0 0 20 0 12 0 \
                    1000 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat(line, 100), Some(Duration::from_millis(3_750)));
        assert_eq!(parse_stat("4242 (short) S 1", 100), None);
        assert_eq!(parse_stat(line, 0), None);
    }

    #[test]
    fn this_process_and_its_own_stat_agree() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(spin.elapsed());
        }
        // Read in this order, the tick count cannot be ahead of getrusage (other test threads
        // only add to the later reading).
        let stat = of_process(std::process::id()).expect("/proc/<pid>/stat");
        let own = own().expect("getrusage");
        assert!(own >= Duration::from_millis(20), "{own:?}");
        assert!(stat > Duration::ZERO, "{stat:?}");
        assert!(
            stat <= own + Duration::from_millis(10),
            "{stat:?} vs {own:?}"
        );
    }

    #[test]
    fn per_story_needs_stories() {
        assert_eq!(ms_per_story(Some(Duration::from_secs(2)), 1_000), Some(2.0));
        assert_eq!(ms_per_story(Some(Duration::from_secs(2)), 0), None);
        assert_eq!(ms_per_story(None, 10), None);
    }
}
