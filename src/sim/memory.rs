//! Resident memory of this process, for the bench: its peak (`VmHWM`), and `VmRSS` sampled every
//! second over a run, with the growth fitted by least squares so a leak shows as a positive slope.

use std::io::Read as _;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

const STATUS: &str = "/proc/self/status";
/// How often [`Sampler`] reads `VmRSS`.
const EVERY: Duration = Duration::from_secs(1);
/// The placement phase's second half is fitted when it holds at least this many samples; else the
/// whole run is.
const MIN_WINDOW_SAMPLES: usize = 10;

/// Peak resident memory of this process (`VmHWM`), in MB.
pub fn peak_mb() -> Option<f64> {
    status_mb(&std::fs::read_to_string(STATUS).ok()?, "VmHWM:")
}

/// A `kB` field of `/proc/<pid>/status` (`key` with its colon), in MB.
fn status_mb(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resident memory at a moment of the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since the run started.
    pub at: f64,
    pub mb: f64,
}

/// A task reading this process's `VmRSS` when started, every second, and when stopped. One read of
/// `/proc/self/status` into the same buffer each time.
pub struct Sampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling; times count from `started`.
    pub fn start(started: Instant) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut buf = String::with_capacity(4096);
            let mut samples = Vec::with_capacity(256);
            let mut take = |samples: &mut Vec<Sample>| {
                if let Some(mb) = rss_mb(&mut buf) {
                    samples.push(Sample {
                        at: started.elapsed().as_secs_f64(),
                        mb,
                    });
                }
            };
            // The first at once, whenever the run ends: a run shows at least two samples.
            take(&mut samples);
            let mut ticks = tokio::time::interval_at(Instant::now() + EVERY, EVERY);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => take(&mut samples),
                    _ = &mut stopped => break,
                }
            }
            take(&mut samples);
            samples
        });
        Self { stop, task }
    }

    /// Takes a last sample and returns them all, oldest first.
    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// This process's `VmRSS` in MB, read into `buf`.
fn rss_mb(buf: &mut String) -> Option<f64> {
    buf.clear();
    std::fs::File::open(STATUS).ok()?.read_to_string(buf).ok()?;
    status_mb(buf, "VmRSS:")
}

/// Which samples the growth was fitted over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrowthWindow {
    /// The second half of the time orders were being placed.
    PlacementSecondHalf,
    /// Every sample: the placement's second half held too few.
    WholeRun,
}

impl GrowthWindow {
    /// Its name in the JSON report.
    pub fn key(self) -> &'static str {
        match self {
            Self::PlacementSecondHalf => "placement_second_half",
            Self::WholeRun => "whole_run",
        }
    }

    /// In words, for the table.
    pub fn describe(self) -> &'static str {
        match self {
            Self::PlacementSecondHalf => "over the placement's second half",
            Self::WholeRun => "over the whole run",
        }
    }
}

/// Resident memory over a run, in MB.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RssTally {
    pub first: f64,
    pub max: f64,
    pub last: f64,
    pub samples: usize,
    /// The least-squares slope of the samples in `window`, in MB per minute; `None` without two
    /// samples at different times.
    pub growth_mb_per_min: Option<f64>,
    pub window: GrowthWindow,
}

impl RssTally {
    /// The tally of `samples` (oldest first) from a run whose orders were all placed `placed`
    /// seconds after it started (`None`: placing lasted the whole run); `None` without samples.
    pub fn of(samples: &[Sample], placed: Option<f64>) -> Option<Self> {
        let (first, last) = (samples.first()?, samples.last()?);
        let placed = placed.unwrap_or(last.at);
        let half: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.at >= placed / 2.0 && s.at <= placed)
            .map(|s| (s.at, s.mb))
            .collect();
        let (points, window) = if half.len() >= MIN_WINDOW_SAMPLES {
            (half, GrowthWindow::PlacementSecondHalf)
        } else {
            let all = samples.iter().map(|s| (s.at, s.mb)).collect();
            (all, GrowthWindow::WholeRun)
        };
        Some(Self {
            first: first.mb,
            max: samples.iter().map(|s| s.mb).fold(f64::MIN, f64::max),
            last: last.mb,
            samples: samples.len(),
            growth_mb_per_min: slope(&points).map(|per_sec| per_sec * 60.0),
            window,
        })
    }
}

/// The least-squares slope of `y` over `x` of `points`; `None` with fewer than two distinct `x`.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in points {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
    }
    (sxx > 0.0 && sxx.is_finite()).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn the_slope_of_a_line_is_its_gradient() {
        let line: Vec<(f64, f64)> = (0..20).map(|x| (x as f64, 3.0 + 0.5 * x as f64)).collect();
        assert!(close(slope(&line).unwrap(), 0.5));
        let flat: Vec<(f64, f64)> = (0..20).map(|x| (x as f64, 7.0)).collect();
        assert!(close(slope(&flat).unwrap(), 0.0));
        let falling = [(1.0, 10.0), (3.0, 6.0)];
        assert!(close(slope(&falling).unwrap(), -2.0));
    }

    #[test]
    fn the_slope_sees_through_symmetric_noise() {
        // Noise of ±1 alternating around a flat level, then around a gentle rise.
        let flat: Vec<(f64, f64)> = (0..60)
            .map(|x| (x as f64, 100.0 + if x % 2 == 0 { 1.0 } else { -1.0 }))
            .collect();
        assert!(slope(&flat).unwrap().abs() < 0.01, "{:?}", slope(&flat));
        let rising: Vec<(f64, f64)> = flat.iter().map(|&(x, y)| (x, y + 0.1 * x)).collect();
        assert!((slope(&rising).unwrap() - 0.1).abs() < 0.01);
    }

    #[test]
    fn no_slope_without_two_distinct_times() {
        assert_eq!(slope(&[]), None);
        assert_eq!(slope(&[(1.0, 5.0)]), None);
        assert_eq!(slope(&[(2.0, 5.0), (2.0, 9.0)]), None);
    }

    fn samples(secs: u32, mb: impl Fn(f64) -> f64) -> Vec<Sample> {
        (0..=secs)
            .map(|s| Sample {
                at: s as f64,
                mb: mb(s as f64),
            })
            .collect()
    }

    #[test]
    fn a_long_placement_is_fitted_over_its_second_half() {
        // Warming up for 30 s (+60 MB), flat for the rest of a 120 s placement, then a drain that
        // frees 40 MB.
        let run = samples(150, |t| {
            if t < 30.0 {
                100.0 + 2.0 * t
            } else if t <= 120.0 {
                160.0
            } else {
                120.0
            }
        });
        let tally = RssTally::of(&run, Some(120.0)).unwrap();
        assert_eq!(tally.window, GrowthWindow::PlacementSecondHalf);
        assert!(close(tally.growth_mb_per_min.unwrap(), 0.0), "{tally:?}");
        assert_eq!((tally.first, tally.max, tally.last), (100.0, 160.0, 120.0));
        assert_eq!(tally.samples, 151);

        // A leak of 1 MB a second after the warm-up shows as 60 MB a minute.
        let leak = samples(120, |t| 100.0 + t);
        let tally = RssTally::of(&leak, None).unwrap();
        assert_eq!(tally.window, GrowthWindow::PlacementSecondHalf);
        assert!(close(tally.growth_mb_per_min.unwrap(), 60.0), "{tally:?}");
    }

    #[test]
    fn a_short_run_is_fitted_whole() {
        let run = samples(12, |t| 50.0 + 0.5 * t);
        let tally = RssTally::of(&run, Some(8.0)).unwrap();
        assert_eq!(tally.window, GrowthWindow::WholeRun);
        assert!(close(tally.growth_mb_per_min.unwrap(), 30.0), "{tally:?}");

        let one = [Sample { at: 0.0, mb: 42.0 }];
        let tally = RssTally::of(&one, None).unwrap();
        assert_eq!((tally.first, tally.max, tally.last), (42.0, 42.0, 42.0));
        assert_eq!(tally.growth_mb_per_min, None);
        assert_eq!(RssTally::of(&[], None), None);
    }

    #[test]
    fn status_fields_in_mb() {
        let status = "Name:\torderhub\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nThreads:\t9\n";
        assert_eq!(status_mb(status, "VmHWM:"), Some(200.0));
        assert_eq!(status_mb(status, "VmRSS:"), Some(100.0));
        assert_eq!(status_mb(status, "VmSwap:"), None);
    }

    #[tokio::test]
    async fn the_sampler_reads_this_process() {
        let sampler = Sampler::start(Instant::now());
        let samples = sampler.stop().await;
        // Linux: the first and the last, of a plausible size.
        assert!(samples.len() >= 2, "{samples:?}");
        for s in &samples {
            assert!(s.mb > 1.0 && s.mb < 100_000.0, "{s:?}");
        }
        assert!(samples.windows(2).all(|w| w[0].at <= w[1].at));
    }
}
