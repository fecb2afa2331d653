//! Session-time models for churn: exponential, Pareto and Weibull with a given median.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// A session-time distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sessions {
    Exponential {
        median: f64,
    },
    /// Heavy-tailed: many short sessions, a few very long ones (shape alpha > 1).
    Pareto {
        median: f64,
        shape: f64,
    },
    Weibull {
        median: f64,
        shape: f64,
    },
}

impl Sessions {
    pub fn new(model: &str, median: Duration, shape: f64) -> Option<Sessions> {
        let m = median.as_secs_f64();
        match model {
            "exponential" => Some(Sessions::Exponential { median: m }),
            "pareto" => Some(Sessions::Pareto { median: m, shape }),
            "weibull" => Some(Sessions::Weibull { median: m, shape }),
            _ => None,
        }
    }

    /// Draws one session length, in seconds.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> f64 {
        let u: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
        match *self {
            Sessions::Exponential { median } => -u.ln() * median / std::f64::consts::LN_2,
            Sessions::Pareto { median, shape } => {
                let xm = median / 2f64.powf(1.0 / shape);
                xm / u.powf(1.0 / shape)
            }
            Sessions::Weibull { median, shape } => {
                let scale = median / std::f64::consts::LN_2.powf(1.0 / shape);
                scale * (-u.ln()).powf(1.0 / shape)
            }
        }
    }

    /// The mean session length (seconds), estimated from 200,000 draws of a fixed seed: it
    /// sets the arrival rate that keeps the population stable (Little's law).
    pub fn mean(&self) -> f64 {
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0x5e55);
        let n = 200_000;
        (0..n).map(|_| self.sample(&mut rng)).sum::<f64>() / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn medians_are_what_was_asked() {
        let m = Duration::from_secs(3600);
        for s in [
            Sessions::new("exponential", m, 1.0).unwrap(),
            Sessions::new("pareto", m, 1.5).unwrap(),
            Sessions::new("weibull", m, 0.6).unwrap(),
        ] {
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let mut v: Vec<f64> = (0..50_001).map(|_| s.sample(&mut rng)).collect();
            v.sort_by(f64::total_cmp);
            let med = v[25_000];
            assert!((med / 3600.0 - 1.0).abs() < 0.05, "{s:?}: median {med}");
        }
        // Exponential mean = median / ln 2.
        let e = Sessions::Exponential { median: 100.0 }.mean();
        assert!((e - 144.27).abs() < 2.0, "{e}");
    }
}
